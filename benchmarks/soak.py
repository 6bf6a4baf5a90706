"""Does a tunnel's memory grow while connections open and close for a long time?

    .venv/bin/python benchmarks/soak.py [--seconds 600] [--backends openssh,sshtunnel]
                                        [--json FILE]

Builds the test network, opens one tunnel per jupyter_tunnel backend (both at once unless
``--backends`` names one, in processes of their own), and until the time is up drives
each with rounds of 50 concurrent 1 MiB fetches, 100 requests on new connections and an
8 MiB download.  The memory of each tunnel's forwarding processes (RSS and PSS) is
sampled after every round; the summary gives the first RSS sample, the last, the
highest, and the growth over the second half (a leak keeps growing there, an
allocator's high-water mark does not): its last sample less its first, and the slope of
a least-squares line through all its samples times its length (less swayed by where in
its ups and downs a single sample falls), and the errors (exit 1 when there were any).
The summary also gives the growth between bursts (the lowest sample of the last 150 s of
the second half less that of its first 150 s) and, for the Python process, the trend of
each kind of memory (heap, malloc arenas, thread stacks, files, other). The JSON has the
metadata of run.py's.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from driver import each, exit_on_signal  # noqa: E402
from meta import code_state, meta  # noqa: E402
from procs import Procs, pss_mb, rss_mb  # noqa: E402

from jupyter_tunnel.sandbox import Sandbox  # noqa: E402


def client(*args: str) -> dict[str, Any]:
    result = subprocess.run([sys.executable, str(HERE / "client.py"), *args],
                            capture_output=True, text=True, timeout=300, check=True)
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def drive(info: dict[str, Any], token: str, until: float, state: dict[str, Any]) -> None:
    """Rounds of traffic until the time is up; a sample (seconds, RSS, PSS) after each,
    and the RSS of each kind of process (:func:`by_role`).  Errors are counted in state;
    an exception ends the thread and is kept there."""
    url = f"http://127.0.0.1:{info['local_port']}/"
    start = time.monotonic()
    pids = info["pids"]
    try:
        while time.monotonic() < until:
            con = client("concurrent", url + "files/soak-1m.bin", token, "50", str(1 << 20))
            seq = client("sequential", url + "api/status", token, "100")
            client("down", "127.0.0.1", str(info["forward_port"]), str(8 << 20), "1")
            state["errors"] += con["errors"] + seq["errors"]
            for sample in con.get("error_samples", []) + seq.get("error_samples", []):
                if len(state["error_samples"]) < 20:  # what failed, and when
                    state["error_samples"].append(f"{time.monotonic() - start:.0f} s: {sample}")
            state["connections"] += 50 + 100 + 1
            now = time.monotonic() - start
            state["samples"].append((now, rss_mb(pids), pss_mb(pids)))
            state["by_role"].append((now, by_role(info)))
            python = [int(p) for p, role in info["roles"].items() if role == "python"]
            state["by_mapping"].append((now, by_mapping(python)))
    except Exception as exc:  # reported in the summary, fails the run
        state["exception"] = f"{type(exc).__name__}: {exc}"


def by_mapping(pids: list[int]) -> dict[str, float]:
    """RSS in MB of these processes by kind of mapping: ``heap`` (brk), ``arenas`` (malloc's
    64 MiB-aligned heaps of other threads, anonymous), ``stacks`` (threads' 8 MiB stacks),
    ``files`` (mapped files) and ``other`` anonymous memory; tells which one creeps."""
    kinds = dict.fromkeys(("heap", "arenas", "stacks", "files", "other"), 0.0)
    for pid in set(pids):
        try:
            text = Path(f"/proc/{pid}/smaps").read_text()
        except OSError:
            continue
        kind = "other"
        for line in text.splitlines():
            head = line.split()
            if head and "-" in head[0] and ":" not in head[0]:
                start, end = (int(x, 16) for x in head[0].split("-"))
                size, name = end - start, head[5] if len(head) > 5 else ""
                if name == "[heap]":
                    kind = "heap"
                elif name.startswith("/"):
                    kind = "files"
                elif name:
                    kind = "other"
                elif abs(size - (8 << 20)) <= 4096:  # the guard page may be split off
                    kind = "stacks"
                elif size <= 64 << 20 and start % (64 << 20) == 0:
                    kind = "arenas"
                else:
                    kind = "other"
            elif line.startswith("Rss:"):
                kinds[kind] += int(head[1]) * 1024 / 1e6
    return kinds


def by_role(info: dict[str, Any]) -> dict[str, float]:
    """RSS in MB of the tunnel's processes by role (python, ssh_master, jump_helper...)."""
    roles: dict[str, list[int]] = {}
    for pid, role in info["roles"].items():
        roles.setdefault(role, []).append(pid)
    return {role: rss_mb(pids) for role, pids in sorted(roles.items())}


def trend(points: list[tuple[float, float]]) -> float:
    """Growth over the span of ``points`` (seconds, MB) along their least-squares line."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if not var:
        return 0.0
    slope = sum((t - mean_t) * (v - mean_v) for t, v in points) / var
    return slope * (points[-1][0] - points[0][0])


def floor_growth(samples: list[tuple[float, float, float]], window: float = 150.0) -> float:
    """The lowest RSS of the last ``window`` seconds of ``samples`` less that of the first:
    growth between bursts (a sample taken right after a burst of 50 fetches can sit
    several MB above its neighbours)."""
    if not samples:
        return 0.0
    start, end = samples[0][0], samples[-1][0]
    first = [r for t, r, _ in samples if t < start + window] or [samples[0][1]]
    last = [r for t, r, _ in samples if t > end - window] or [samples[-1][1]]
    return min(last) - min(first)


BACKENDS = ("openssh", "sshtunnel")


def _backends(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BACKENDS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"backends are {', '.join(BACKENDS)}")
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--backends", type=_backends, default=list(BACKENDS),
                        help="comma-separated: openssh,sshtunnel (default: both)")
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, exit_on_signal)
    started, load_before = time.time(), os.getloadavg()
    code = code_state(HERE.parent)  # what runs: the checkout may change meanwhile
    bench = SimpleNamespace(runtime=Path(tempfile.mkdtemp(prefix="jt-soak-")), baseline=None)
    bench.net = Sandbox(prefix="jtsoak" + secrets.token_hex(2))
    procs = Procs(bench)
    server: subprocess.Popen[str] | None = None

    def stop_server() -> None:
        if server is not None:
            server.kill()
            server.wait()

    finished = False
    try:
        bench.net.start()
        (bench.net.home("beast") / "soak-1m.bin").write_bytes(os.urandom(1 << 20))
        server = bench.net.popen_in("beast", [sys.executable, str(HERE / "server.py")],
                                    stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None and bench.net.jupyter is not None
        port = int(server.stdout.readline())
        until = time.monotonic() + args.seconds
        states: dict[str, dict[str, Any]] = {}
        threads = []
        for contender in (f"jt-{backend}" for backend in args.backends):
            info = procs.open(contender, count=1, forward=port)
            procs.check_own_ssh(info)
            states[contender] = {"errors": 0, "error_samples": [], "connections": 0,
                                 "by_mapping": [],
                                 "exception": None,
                                 "samples": [(0.0, rss_mb(info["pids"]), pss_mb(info["pids"]))],
                                 "by_role": [(0.0, by_role(info))]}
            threads.append(threading.Thread(target=drive, args=(
                info, bench.net.jupyter.token, until, states[contender])))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        finished = True
    finally:
        each(procs.close_all, stop_server, bench.net.stop,
             lambda: shutil.rmtree(bench.runtime, ignore_errors=True),
             report=None if finished else lambda text: print(text, file=sys.stderr))
    summary = {}
    for contender, state in states.items():
        samples = state["samples"]
        rss = [r for _, r, _ in samples]
        second = [s for s in samples if s[0] >= args.seconds / 2] or [samples[-1]]
        half = [(r, p) for _, r, p in second]
        summary[contender] = {
            "rounds": len(rss) - 1, "connections": state["connections"],
            "errors": state["errors"], "error_samples": state["error_samples"],
            "exception": state["exception"],
            "first_mb": rss[0], "last_mb": rss[-1], "max_mb": max(rss),
            "second_half_growth_mb": half[-1][0] - half[0][0],
            "second_half_growth_pss_mb": half[-1][1] - half[0][1],
            "second_half_trend_mb": trend([(t, r) for t, r, _ in second]),
            "second_half_trend_pss_mb": trend([(t, p) for t, _, p in second]),
            "second_half_trend_by_role_mb": {
                role: trend([(t, r[role]) for t, r in state["by_role"]
                             if t >= second[0][0] and role in r])
                for role in state["by_role"][0][1]},
            "second_half_floor_growth_mb": floor_growth(second),
            "second_half_trend_by_mapping_mb": {
                kind: trend([(t, m[kind]) for t, m in state["by_mapping"] if t >= second[0][0]])
                for kind in (state["by_mapping"][0][1] if state["by_mapping"] else {})}}
        print(f"{contender}: {summary[contender]}")
    if args.json:
        info_meta = meta(started, load_before,
                         {"seconds": args.seconds, "backends": args.backends},
                         list(states), None, {"prefix": bench.net.prefix}, code)
        Path(args.json).write_text(json.dumps(
            {"meta": info_meta, "summary": summary,
             "samples": {c: s["samples"] for c, s in states.items()},
             "samples_by_role": {c: s["by_role"] for c, s in states.items()},
             "samples_by_mapping": {c: s["by_mapping"] for c, s in states.items()}}, indent=1))
    bad = [c for c, s in summary.items() if s["errors"] or s["exception"]]
    if bad:
        sys.exit(f"FAILED: errors or an exception in {', '.join(bad)} (see above)")


if __name__ == "__main__":
    main()
