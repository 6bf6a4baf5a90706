"""The benchmark's pure parts on fixed data: the table, the goals, the failure checks, the
percentiles and the HTTP checks of the client, and run.py's argument checks."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import BENCH, load_benchmark

report = load_benchmark("report")
client = load_benchmark("client")

CFG = {"bulk_mib": 32, "sequential": 200, "concurrent": 50, "many": 20}
CLEAN = {"jupyter_down_mbps": 200.0, "latency_busy_p50_ms": 5.0, "sequential_s": 0.3,
         "sequential_errors": 0.0, "concurrent_errors": 0.0}
TUNNEL = {**CLEAN, "cpu_s_per_gib": 3.0, "rss_1_mb": 20.0, "pss_1_mb": 10.0,
          "ready_cold_s": 0.4}


# client.percentiles -------------------------------------------------------------------
def test_percentiles_nearest_rank() -> None:
    samples = [i / 1000 for i in range(100, 0, -1)]  # 1..100 ms, unsorted
    p = client.percentiles(samples)
    assert p == {"p50_ms": pytest.approx(51.0), "p99_ms": pytest.approx(100.0),
                 "max_ms": pytest.approx(100.0), "n": 100}


def test_percentiles_one_sample_and_none() -> None:
    assert client.percentiles([0.002])["p99_ms"] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        client.percentiles([])


def test_check_response() -> None:
    ok = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nServer: x\r\n\r\nabcd"
    assert client.check_response(ok) is None
    assert client.check_response(ok, 4) is None
    assert "expected 5" in client.check_response(ok, 5)
    assert "status line" in client.check_response(ok.replace(b"200 OK", b"403 Forbidden"))
    assert "body of 3 bytes" in client.check_response(ok[:-1])
    assert client.check_response(b"HTTP/1.1 200 OK\r\n\r\nabcd") == "no Content-Length"
    assert "no complete header" in client.check_response(b"HTTP/1.1 200 OK\r\n")


# report.summarize / table / goals / failures ---------------------------------------------
def test_summarize_medians_and_drops_empty() -> None:
    samples = {"openssh": {"a": [3.0, 1.0, 2.0], "b": [], "c": [1.0, 2.0]}, "x": {}}
    assert report.summarize(samples) == {"openssh": {"a": 2.0, "c": 1.5}, "x": {}}


def test_table_ratios_labels_and_markdown() -> None:
    results = {
        "openssh": {"jupyter_down_mbps": 200.0, "rss_n_mb": 300.0, "pss_n_mb": 100.0,
                    "concurrent_errors": 0.0},
        "jt-openssh": {"jupyter_down_mbps": 100.0, "rss_n_mb": 60.0, "pss_n_mb": 50.0,
                       "concurrent_errors": 0.0},
    }
    text = report.table(results, ["openssh", "jt-openssh", "jt-sshtunnel"], CFG)
    lines = text.splitlines()
    assert lines[0].split() == ["figure", "openssh", "jt-openssh", "jt-sshtunnel"]
    row = next(ln for ln in lines if ln.startswith("bulk download, Jupyter"))
    assert "32 MiB" in row and "64 MiB" not in text
    assert "100 (0.50x)" in row and row.rstrip().endswith("-")
    pss = next(ln for ln in lines if ln.startswith("memory, 20 tunnels, PSS"))
    assert "(0.50x)" in pss  # the N-tunnel comparison is in PSS ...
    rss = next(ln for ln in lines if ln.startswith("memory, 20 tunnels, RSS"))
    assert "x)" not in rss  # ... summed RSS is shown without a ratio
    errors = next(ln for ln in lines if ln.startswith("50 concurrent connections: errors"))
    assert "x)" not in errors
    assert not any(ln.startswith("time to ready") for ln in lines)  # no data: no row
    md = report.table(results, ["openssh", "jt-openssh"], CFG, markdown=True).splitlines()
    assert md[0] == "| figure | openssh | jt-openssh |"
    assert md[1] == "| --- | --- | --- |"
    assert all(ln.startswith("| ") and ln.endswith(" |") for ln in md)


def test_goals_met_and_missed() -> None:
    results = {
        "openssh": {"jupyter_down_mbps": 200.0, "forward_down_mbps": 200.0,
                    "forward_up_mbps": 200.0, "latency_idle_p50_ms": 0.2,
                    "latency_busy_p99_ms": 10.0},
        "jt-openssh": {"jupyter_down_mbps": 210.0, "forward_down_mbps": 190.0,
                       "forward_up_mbps": 220.0, "latency_idle_p50_ms": 0.2,
                       "latency_busy_p99_ms": 9.0, "concurrent_slowest_connect_ms": 150.0,
                       "concurrent_errors": 0.0, "rss_detached_mb": 40.0,
                       "rss_per_tunnel_mb": 0.1, "ready_cold_s": 0.5, "ready_warm_s": 0.1},
        "jt-sshtunnel": {"jupyter_down_mbps": 90.0, "concurrent_errors": 2.0},
    }
    checks = {(c["backend"], c["goal"]): c for c in report.goals(results, CFG)}
    bulk = checks[("jt-openssh", "bulk >= 1.0x OpenSSH")]
    assert bulk["value"] == 0.95 and not bulk["met"]  # the worst of the three ratios
    assert checks[("jt-openssh", "latency p50 <= 1.1x")]["met"]
    assert checks[("jt-openssh", "p99 while downloading <= 1.0x")]["met"]
    assert not checks[("jt-openssh", "no connect over 100 ms with 50 at once (ms)")]["met"]
    assert checks[("jt-openssh", "ready warm <= 0.3 s")]["met"]
    assert checks[("jt-openssh", "detached process <= 80 MB (RSS)")]["met"]
    assert not checks[("jt-sshtunnel", "bulk >= 0.5x OpenSSH")]["met"]  # 0.45
    assert not checks[("jt-sshtunnel", "no error with 50 at once")]["met"]
    assert ("jt-sshtunnel", "ready cold <= 1.5 s") not in checks  # openssh backend only
    assert ("jt-sshtunnel", "latency p50 <= 1.5x") not in checks  # no figure: no check
    small = report.goals(results, {"concurrent": 5})
    assert any(c["goal"] == "no error with 5 at once" for c in small)


def test_goals_of_the_resume_contenders() -> None:
    ref = {"jupyter_down_mbps": 200.0, "forward_down_mbps": 200.0, "forward_up_mbps": 200.0,
           "latency_idle_p50_ms": 0.2, "latency_busy_p99_ms": 10.0, "sequential_p50_ms": 2.0}
    results = {
        "openssh": ref,
        "jt-openssh-resume": {**ref, "forward_up_mbps": 170.0, "latency_idle_p50_ms": 0.25,
                              "sequential_p50_ms": 2.9, "concurrent_errors": 0.0,
                              "rss_detached_mb": 500.0},
        "jt-sshtunnel-resume": {**ref, "forward_down_mbps": 150.0, "latency_idle_p50_ms": 0.3,
                                "sequential_p50_ms": 3.2},
    }
    checks = {(c["backend"], c["goal"]): c for c in report.goals(results, CFG)}
    assert checks[("jt-openssh-resume", "bulk >= 0.8x OpenSSH")] == {
        "backend": "jt-openssh-resume", "goal": "bulk >= 0.8x OpenSSH", "value": 0.85,
        "met": True}
    assert checks[("jt-openssh-resume", "latency p50 <= 1.3x")]["met"]  # 1.25
    assert checks[("jt-openssh-resume", "new connection p50 <= 1.5x")]["met"]  # 1.45
    assert checks[("jt-openssh-resume", "no error with 50 at once")]["met"]
    assert not checks[("jt-sshtunnel-resume", "bulk >= 0.8x OpenSSH")]["met"]  # 0.75
    assert not checks[("jt-sshtunnel-resume", "latency p50 <= 1.3x")]["met"]  # 1.5
    assert not checks[("jt-sshtunnel-resume", "new connection p50 <= 1.5x")]["met"]  # 1.6
    # the plain backends' other goals are not the resume contenders'
    assert {g for b, g in checks if b == "jt-openssh-resume"} == {
        "bulk >= 0.8x OpenSSH", "latency p50 <= 1.3x", "new connection p50 <= 1.5x",
        "no error with 50 at once"}


def test_resume_cost_against_the_same_backend() -> None:
    results = {"jt-openssh": {"forward_up_mbps": 200.0, "sequential_p50_ms": 2.0},
               "jt-openssh-resume": {"forward_up_mbps": 150.0, "sequential_p50_ms": 3.0,
                                     "cpu_s_per_gib": 4.0},
               "jt-sshtunnel-resume": {"forward_up_mbps": 100.0}}  # no plain figures
    assert report.resume_cost(results) == [
        "jt-openssh-resume / jt-openssh: upload 0.75x, new connection p50 1.50x"]


def test_table_shows_the_resume_helper() -> None:
    results = {"openssh": {"cpu_s_per_gib": 3.0, "cpu_s_per_gib:jump_helper": 1.5},
               "jt-sshtunnel-resume": {"cpu_s_per_gib": 6.0, "cpu_s_per_gib:python": 4.0,
                                       "cpu_s_per_gib:resume_helper": 2.0,
                                       "rss_helper_mb": 19.0}}
    lines = report.table(results, ["openssh", "jt-sshtunnel-resume"], CFG).splitlines()
    helper = next(ln for ln in lines if "of which resume helper (on beast)" in ln)
    assert helper.split()[-1] == "2.00"
    memory = next(ln for ln in lines if ln.startswith("memory, resume helper on beast"))
    assert memory.split()[-1] == "19.0" and "x)" not in memory


def test_failures() -> None:
    contenders = ["ceiling", "openssh", "jt-openssh"]
    clean = {"ceiling": CLEAN, "openssh": TUNNEL, "jt-openssh": TUNNEL}
    assert report.failures(clean, contenders) == []
    broken = {"ceiling": {**CLEAN, "sequential_errors": 3.0},
              "openssh": {**TUNNEL, "cpu_s_per_gib": 0.0, "concurrent_errors": 1.0},
              "jt-openssh": {k: v for k, v in TUNNEL.items() if k != "pss_1_mb"}}
    found = report.failures(broken, contenders)
    assert "ceiling: sequential_errors = 3" in found
    assert "openssh: concurrent_errors = 1" in found
    assert any(f.startswith("openssh: cpu_s_per_gib = 0") for f in found)
    assert "jt-openssh: no pss_1_mb" in found
    assert len(found) == 4
    # a resume contender must have had its helper on beast measured
    resumed = {"openssh": TUNNEL, "jt-openssh-resume": TUNNEL}
    assert report.failures(resumed, ["openssh", "jt-openssh-resume"]) == [
        "jt-openssh-resume: no rss_helper_mb"]
    resumed["jt-openssh-resume"] = {**TUNNEL, "rss_helper_mb": 19.0}
    assert report.failures(resumed, ["openssh", "jt-openssh-resume"]) == []


# run.py's arguments (checked before anything is built) ------------------------------------
@pytest.mark.parametrize(("args", "message"), [
    (["--reps", "2"], "at least 3"),
    (["--contenders", "openssh,jt-bogus"], "unknown contender jt-bogus"),
    (["--contenders", "jt-baseline-resume"], "unknown contender jt-baseline-resume"),
    (["--contenders", "openssh,jt-baseline"], "jt-baseline needs --baseline"),
    (["--baseline", "/nonexistent"], "no jupyter_tunnel/__init__.py"),
])
def test_run_arguments_refused(args: list[str], message: str) -> None:
    result = subprocess.run([sys.executable, str(BENCH / "run.py"), *args],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_run_contenders_default_and_picked() -> None:
    run = load_benchmark("run")
    assert run.parse_args([]).contenders == [
        "ceiling", "openssh", "jt-openssh", "jt-sshtunnel", "jt-openssh-resume",
        "jt-sshtunnel-resume"]
    picked = run.parse_args(["--quick", "--contenders", "jt-sshtunnel-resume"])
    assert picked.contenders == ["openssh", "jt-sshtunnel-resume"]  # the reference added
    procs = load_benchmark("procs")
    assert [(procs.Procs.backend(c), procs.Procs.resume(c)) for c in
            ("jt-openssh", "jt-openssh-resume", "jt-sshtunnel-resume", "jt-baseline")] == [
        ("openssh", False), ("openssh", True), ("sshtunnel", True), ("sshtunnel", False)]


# procs: which jupyter_tunnel a detached process would import ----------------------------
def test_detached_sys_path_check(tmp_path: Path) -> None:
    from types import SimpleNamespace

    procs = load_benchmark("procs")
    root = BENCH.parent
    baseline = tmp_path / "base"
    (baseline / "jupyter_tunnel").mkdir(parents=True)
    (baseline / "jupyter_tunnel" / "__init__.py").write_text("")
    (tmp_path / "jupyter_tunnel").mkdir()  # a folder, not a package: imports nothing
    bench = SimpleNamespace(runtime=tmp_path, baseline=str(baseline))
    checker = procs.Procs(bench)

    def check(contender: str, cwd: Path) -> None:
        env = checker.env(contender)
        with subprocess.Popen(["sleep", "30"], cwd=cwd, env=env) as proc:
            try:
                while not Path(f"/proc/{proc.pid}/cmdline").read_bytes().startswith(b"sleep"):
                    time.sleep(0.01)  # exec'd: environ is the child's own
                checker._check_sys_path(contender, proc.pid)
            finally:
                proc.kill()

    check("jt-sshtunnel", tmp_path)  # a neutral folder
    check("jt-baseline", tmp_path)
    check("jt-baseline", baseline)
    with pytest.raises(RuntimeError, match="may not import"):
        check("jt-baseline", root)  # -m would import this tree, not the baseline
    with pytest.raises(RuntimeError, match="may not import"):
        check("jt-sshtunnel", baseline)
