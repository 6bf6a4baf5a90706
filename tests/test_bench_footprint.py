"""The footprint benchmark (benchmarks/footprint*.py): its pure parts (deltas, medians, the
tables, the arguments), and a --quick run on the test network whose figures are sane and
which leaves nothing behind (how much anything costs is not judged here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BENCH, load_benchmark, need

ROOT = Path(__file__).resolve().parent.parent


footprint = load_benchmark("footprint")  # puts benchmarks/ on sys.path for the two below
footprint_procs = load_benchmark("footprint_procs")
footprint_report = load_benchmark("footprint_report")


def _snap(**figures: float) -> dict[str, object]:
    return {"figures": {k: figures.get(k, 0.0) for k in footprint_report.FIGURES}}


def test_deltas_against_the_previous_step() -> None:
    snaps = [_snap(here_processes=0, python_pss_mb=50.0, unicorn_tcp=0),
             _snap(here_processes=2, python_pss_mb=51.0, unicorn_tcp=1),
             _snap(here_processes=2, python_pss_mb=51.5, unicorn_tcp=1),
             _snap(here_processes=2, python_pss_mb=57.0, unicorn_tcp=1),
             _snap(here_processes=2, python_pss_mb=57.0, unicorn_tcp=1)]
    got = footprint_report.deltas(snaps)
    assert list(got) == [*footprint_report.STEPS, "total"]
    assert got["tunnel 1"]["here_processes"] == 2 and got["tunnel 1"]["unicorn_tcp"] == 1
    assert got["tunnel 2"]["here_processes"] == 0 and got["tunnel 2"]["python_pss_mb"] == 0.5
    assert got["kernel 1"]["python_pss_mb"] == 5.5
    assert got["total"]["python_pss_mb"] == 7.0 and got["total"]["unicorn_tcp"] == 1


def test_medians_and_tables() -> None:
    samples = {"openssh": {"tunnel 1": {"here_processes": [2, 2, 3], "here_pss_mb": [5.0, 4.0,
                                                                                     6.0]},
                           "total": {"beast_processes": [9, 9, 9], "beast_pss_mb": [180.0]}}}
    results = footprint_report.summarize(samples)
    assert results["openssh"]["tunnel 1"] == {"here_processes": 2, "here_pss_mb": 5.0}
    text = footprint_report.table(results, ["openssh", "sshtunnel"])
    assert "| tunnel 1 | openssh | 2 | 5.0 | - |" in text  # absent backends left out
    assert "sshtunnel" not in text
    assert f"| {footprint_report.USERS} users (x{footprint_report.USERS}) | openssh |" in text
    assert "| 900 | 18,000 |" in text  # one user's total times USERS
    roles = {"openssh": {"beast: ipykernel": {"processes": 2, "pss_mb": 80.0, "rss_mb": 107.0},
                         "here: ssh ControlMaster": {"processes": 1, "pss_mb": 2.5,
                                                     "rss_mb": 4.4}}}
    text = footprint_report.roles_table(roles, ["openssh"])
    assert text.index("here: ssh ControlMaster") < text.index("beast: ipykernel")
    assert "| beast: ipykernel | openssh | 2 | 80.0 | 107 | 40.0 |" in text


def test_roles() -> None:
    assert footprint_procs.role("beast", "sshd: alice@notty") == "sshd (per connection)"
    assert footprint_procs.role("here", "ssh -F x -v -W [10.0.0.1]:22 unicorn") \
        == "ssh ProxyJump helper (ssh -W)"
    assert footprint_procs.role("here", "ssh -F x -v -N -M -S sock beast") == "ssh ControlMaster"
    assert footprint_procs.role("beast", "python3 -I -c import sys;exec(sys.stdin.buffer."
                                         "readline())") == "resume helper (python -I)"
    assert footprint_procs.role("beast", "python -c import sys;exec(sys.stdin.buffer."
                                         "readline())") == "kernel nanny (python)"
    assert footprint_procs.role("beast", "python -m ipykernel_launcher -f k.json") == "ipykernel"


def test_arguments() -> None:
    assert footprint.parse_args(["--backends", "sshtunnel,openssh,sshtunnel"]).backends \
        == ["sshtunnel", "openssh"]
    assert footprint.parse_args(["--quick", "--reps", "1"]).reps == 1
    for bad in (["--backends", "nope"], ["--reps", "2"]):
        with pytest.raises(SystemExit):
            footprint.parse_args(bad)


@pytest.mark.network
def test_footprint_quick(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        need("the benchmark builds network namespaces: run as root")
    out = tmp_path / "footprint.json"
    env = {k: v for k, v in os.environ.items() if k != "JUPYTER_TUNNEL_BACKEND"}
    result = subprocess.run([sys.executable, str(BENCH / "footprint.py"), "--quick", "--json",
                             str(out)], capture_output=True, text=True, timeout=280, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    meta = data["meta"]
    for key in ("date", "commit", "code", "kernel", "os", "load_before", "load_after", "ssh",
                "python", "config", "prefix", "sandbox_dir", "kernelspec", "versions"):
        assert key in meta, key
    assert meta["prefix"].startswith("jtfp")
    assert meta["kernelspec"]["name"] == "beast-python3"
    assert data["failures"] == []
    results = data["results"]
    for backend in ("openssh", "sshtunnel"):
        first, total = results[backend]["tunnel 1"], results[backend]["total"]
        # the first tunnel logs in to both hosts: one connection into each sshd
        assert first["unicorn_tcp"] == 1 and first["beast_tcp"] == 1, backend
        assert first["unicorn_processes"] >= 1 and first["unicorn_pss_mb"] > 0, backend
        assert first["beast_pss_mb"] > 0, backend
        # each remote kernel runs on beast (its ipykernel at least)
        for step in ("kernel 1", "kernel 2"):
            assert results[backend][step]["beast_processes"] >= 1, (backend, step)
            assert results[backend][step]["beast_pss_mb"] > 5, (backend, step)
        assert total["beast_pss_mb"] <= total["beast_rss_mb"] + 0.5, backend
    # openssh: its master and ProxyJump helper here, shared by everything after
    assert results["openssh"]["tunnel 1"]["here_processes"] == 2
    assert results["openssh"]["tunnel 2"]["unicorn_tcp"] == 0
    assert results["openssh"]["total"]["unicorn_tcp"] == 1
    # sshtunnel: nothing here but the Python process, one jump connection per tunnel
    assert results["sshtunnel"]["total"]["here_processes"] == 0
    assert results["sshtunnel"]["tunnel 2"]["unicorn_tcp"] == 1
    assert results["sshtunnel"]["tunnel 1"]["python_rss_mb"] > 0
    # nothing of the run is left: no namespace of its prefix
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=False).stdout
    assert meta["prefix"] not in namespaces
