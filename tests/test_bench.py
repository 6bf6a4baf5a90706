"""The benchmark runs as documented, its figures are sane, and it leaves nothing behind
(tiny sizes; how fast anything is is not judged here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need

ROOT = Path(__file__).resolve().parent.parent
TUNNELS = ("openssh", "jt-openssh", "jt-sshtunnel", "jt-openssh-resume", "jt-sshtunnel-resume")
RESUMED = ("jt-openssh-resume", "jt-sshtunnel-resume")


def _processes_mentioning(*needles: str) -> list[str]:
    """Processes whose command line or environment holds one of the needles."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + b"\0" + (entry / "environ").read_bytes()
        except OSError:
            continue
        if any(n.encode() in blob for n in needles):
            found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()[:200]!r}")
    return found


@pytest.mark.network
def test_benchmark_smoke(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        need("the benchmark builds network namespaces: run as root")
    out = tmp_path / "bench.json"
    env = {k: v for k, v in os.environ.items() if k != "JUPYTER_TUNNEL_BACKEND"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--smoke", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    meta = data["meta"]
    for key in ("date", "commit", "code", "kernel", "os", "memory_mb", "cpu", "cores",
                "load_before", "load_after", "ssh", "python", "paramiko", "config",
                "prefix", "runtime_dir", "sandbox_dir", "packages", "baseline_code"):
        assert key in meta, key
    assert meta["commit"] and meta["code"]["describe"] == meta["commit"]
    assert meta["kernel"] and meta["os"] and meta["memory_mb"] > 0
    assert meta["contenders"] == ["ceiling", *TUNNELS]
    assert data["failures"] == []

    results = data["results"]
    for contender in TUNNELS:
        figures = results[contender]
        for key in ("jupyter_down_mbps", "forward_down_mbps", "forward_up_mbps",
                    "latency_idle_p50_ms", "latency_busy_p99_ms", "busy_stream_mbps",
                    "sequential_s", "concurrent_slowest_connect_ms", "ready_cold_s",
                    "ready_warm_s", "cpu_s_per_gib", "rss_1_mb", "pss_1_mb", "rss_n_mb",
                    "pss_n_mb", "rss_after_traffic_mb"):
            assert figures[key] > 0, (contender, key)
        assert figures["sequential_errors"] == 0
        assert figures["concurrent_errors"] == 0
        # PSS shares what RSS counts once per process
        assert figures["pss_n_mb"] <= figures["rss_n_mb"] + 0.5, contender
    assert results["ceiling"]["jupyter_down_mbps"] > 0
    assert results["ceiling"]["sequential_errors"] == 0
    # the CPU of every forwarding process is counted, per role
    assert results["jt-openssh"]["cpu_s_per_gib:ssh_master"] >= 0
    assert results["jt-openssh"]["cpu_s_per_gib:jump_helper"] >= 0
    assert results["openssh"]["cpu_s_per_gib:jump_helper"] >= 0
    assert results["jt-sshtunnel"]["cpu_s_per_gib:python"] > 0
    for contender in ("jt-openssh", "jt-sshtunnel", *RESUMED):
        assert results[contender]["rss_detached_mb"] > 0
    # the resumable path: its helper on beast carried the bytes and was measured apart
    for contender in RESUMED:
        assert results[contender]["cpu_s_per_gib:resume_helper"] > 0, contender
        assert results[contender]["rss_helper_mb"] > 0, contender
    assert [line.split(" / ")[0] for line in data["resume_cost"]] == list(RESUMED)
    # N tunnels: the reference needs an ssh and a ProxyJump helper each; jt-openssh one
    # Python process, one ssh master and one helper; the in-process backend one process
    many = meta["config"]["many"]
    assert results["openssh"]["processes_n"] == 2 * many
    assert results["jt-openssh"]["processes_n"] == 3
    assert results["jt-sshtunnel"]["processes_n"] == 1
    assert results["jt-openssh-resume"]["processes_n"] == 3  # here; the helpers on beast
    assert results["jt-sshtunnel-resume"]["processes_n"] == 1
    # a second tunnel to the same hosts reuses the first one's ssh master
    assert results["jt-openssh"]["ready_warm_s"] < results["jt-openssh"]["ready_cold_s"]

    assert "x)" in result.stdout  # the table, with ratios
    assert f"{meta['config']['bulk_mib']} MiB" in result.stdout
    assert {g["backend"] for g in data["goals"]} == {"jt-openssh", "jt-sshtunnel", *RESUMED}

    # nothing left behind
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                check=False).stdout
    assert meta["prefix"] not in namespaces
    assert not Path(meta["runtime_dir"]).exists()
    assert not Path(meta["sandbox_dir"]).exists()
    assert _processes_mentioning(meta["runtime_dir"], meta["sandbox_dir"]) == []
