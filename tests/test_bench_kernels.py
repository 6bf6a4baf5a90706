"""The remote-kernel benchmark's pure parts: medians, ratios, the table, the percentile and
the argument checks (benchmarks/kernels.py and kernel_worker.py; no network)."""

from __future__ import annotations

import sys

import pytest
from conftest import load_benchmark

kernels = load_benchmark("kernels")
worker = load_benchmark("kernel_worker")

RESULTS = {"local": {"cold_start_s": 0.5, "rtt_p50_ms": 4.0, "lines_per_s": 80_000.0},
           "jt-openssh": {"cold_start_s": 2.0, "rtt_p50_ms": 6.0, "lines_per_s": 40_000.0},
           "five-ports": {"cold_start_s": 1.0, "rtt_p50_ms": 48.0, "lines_per_s": 20_000.0}}


def test_medians_and_ratios() -> None:
    assert kernels.summarize({"local": {"rtt_p50_ms": [3.0, 1.0, 2.0], "x": []}}) == \
        {"local": {"rtt_p50_ms": 2.0}}
    got = kernels.ratios(RESULTS)
    assert set(got) == {"jt-openssh", "five-ports"}
    assert got["jt-openssh"]["vs_local"] == {"cold_start_s": 4.0, "rtt_p50_ms": 1.5,
                                             "lines_per_s": 0.5}
    assert got["jt-openssh"]["vs_five-ports"]["rtt_p50_ms"] == 0.125
    assert "vs_five-ports" not in got["five-ports"]  # not against itself


def test_table() -> None:
    cfg = {"lines": 20_000, "big": 10_000_000}
    text = kernels.table(RESULTS, ["local", "jt-openssh", "jt-sshtunnel", "five-ports"], cfg)
    assert "| `local` | `jt-openssh` | `five-ports` |" in text  # absent contenders left out
    assert "| 20,000 printed lines, received on iopub (lines/s) | higher | 80,000 | 40,000 " \
           "| 20,000 |" in text
    assert "| 10 MB output (one print) (s) | lower | - | - | - |" in text
    assert "`jt-openssh` / `five-ports`" in text and "0.12x" in text


def test_percentile() -> None:
    values = [float(v) for v in range(1, 101)]
    assert worker.percentile(values, 50) == 50.0
    assert worker.percentile(values, 99) == 99.0
    assert worker.percentile([5.0], 99) == 5.0
    with pytest.raises(ValueError):
        worker.percentile([], 50)


def test_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    args = kernels.parse_args(["--contenders", "local,five-ports,local"])
    assert args.contenders == ["local", "five-ports"]
    with pytest.raises(SystemExit):
        kernels.parse_args(["--contenders", "local,nope"])
    monkeypatch.setattr(sys, "argv", ["kernels.py", "--help"])
    with pytest.raises(SystemExit) as done:
        kernels.main()
    assert done.value.code == 0
