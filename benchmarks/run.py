"""Benchmark jupyter_tunnel's backends against OpenSSH on the sandbox network.

    .venv/bin/python benchmarks/run.py [--quick|--smoke] [--json FILE] [--markdown]
                                       [--contenders LIST] [--baseline DIR] [--reps N]

Builds the test network (laptop -> unicorn -> beast in network namespaces, as the tests
do), then measures, with the contenders alternated within each repetition: bulk
transfers, round-trip latency idle and during a download, new connections one after the
other and 50 at once, time to ready cold and warm, CPU per GiB of the forwarding
processes (also per process role), and memory (RSS and PSS).  Contenders: ``ceiling``
(no tunnel: the client runs on beast), ``openssh`` (``ssh -J unicorn -L … beast`` with
default settings, the reference), ``jt-openssh`` and ``jt-sshtunnel`` (jupyter_tunnel with
each backend), ``jt-openssh-resume`` and ``jt-sshtunnel-resume`` (the same with resumable
connections, ``TunnelManager.resume``), and with ``--baseline DIR`` ``jt-baseline`` (the
sshtunnel backend of the jupyter_tunnel copy in DIR, e.g. an older commit).  Prints a
table (each figure also as a ratio to OpenSSH) and writes everything as JSON; exits 1 when
a figure cannot be trusted (errors on a connection, a tunnel whose processes were not
found).  Needs root (namespaces) and sshd; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from driver import each, rotate, start_as_root  # noqa: E402
from meta import code_state, meta  # noqa: E402
from procs import Procs, cpu_by_pid, pss_mb, rss_mb  # noqa: E402
from report import failures, goals, resume_cost, summarize, table  # noqa: E402

from jupyter_tunnel.sandbox import Sandbox  # noqa: E402

FULL = {"reps": 3, "bulk_mib": 64, "lat_idle": 1000, "lat_busy": 300, "sequential": 200,
        "concurrent": 50, "ready_rounds": 3, "many": 20}
QUICK = {"reps": 1, "bulk_mib": 8, "lat_idle": 200, "lat_busy": 50, "sequential": 20,
         "concurrent": 10, "ready_rounds": 1, "many": 3}
SMOKE = {"reps": 1, "bulk_mib": 8, "lat_idle": 50, "lat_busy": 20, "sequential": 10,
         "concurrent": 5, "ready_rounds": 1, "many": 2}
CONTENDERS = ["ceiling", "openssh", "jt-openssh", "jt-sshtunnel", "jt-openssh-resume",
              "jt-sshtunnel-resume"]
KNOWN = [*CONTENDERS, "jt-baseline"]
#: the namespaces' prefix: "jtbench" and 4 random hex digits ("n" and "h" are not hex
#: digits, so it never equals the tests' "jt" + 4 hex digits or "jtt" + digits)
PREFIX = "jtbench"


class Bench:
    """One benchmark run: the network, the contenders' tunnels, the samples."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.cfg = (SMOKE if args.smoke else QUICK if args.quick else FULL).copy()
        if args.reps:
            self.cfg["reps"] = args.reps
        self.contenders: list[str] = args.contenders
        self.baseline = args.baseline
        self.samples: dict[str, dict[str, list[float]]] = {c: {} for c in self.contenders}
        self.raw: list[dict[str, Any]] = []
        self.runtime = Path(tempfile.mkdtemp(prefix="jt-bench-"))
        self.net = Sandbox(prefix=PREFIX + secrets.token_hex(2), log=self.say)
        self.procs = Procs(self)
        self.tunnels: dict[str, dict[str, Any]] = {}
        self.rss_start: dict[str, float] = {}
        self.server: subprocess.Popen[str] | None = None

    def say(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def add(self, contender: str, key: str, value: float | None) -> None:
        if value is not None:
            self.samples[contender].setdefault(key, []).append(float(value))

    # the client -----------------------------------------------------------------
    def client(self, contender: str, *args: str, timeout: float = 300) -> dict[str, Any]:
        argv = [sys.executable, str(HERE / "client.py"), *args]
        if contender == "ceiling":
            result = self.net.run_in("beast", argv, capture_output=True, text=True,
                                     timeout=timeout)
        else:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                                    check=False)
        if result.returncode != 0:
            raise RuntimeError(f"client {args[0]} for {contender} failed: {result.stderr}")
        out: dict[str, Any] = json.loads(result.stdout)
        self.raw.append({"contender": contender, "command": args[0], "result": out})
        return out

    def endpoints(self, contender: str) -> tuple[str, str, int]:
        """(Jupyter base URL, token, byte server port) as the contender's client sees them."""
        assert self.net.jupyter is not None
        token = self.net.jupyter.token
        if contender == "ceiling":
            return f"http://127.0.0.1:{self.net.jupyter.port}/", token, self.server_port
        t = self.tunnels[contender]
        return f"http://127.0.0.1:{t['local_port']}/", token, t["forward_port"]

    # phases -----------------------------------------------------------------------
    def setup(self) -> None:
        self.net.start()
        home = self.net.home("beast")
        for name, size in (("bench-big.bin", self.cfg["bulk_mib"] << 20),
                           ("bench-1m.bin", 1 << 20)):
            with open(home / name, "wb") as fh:
                fh.write(os.urandom(size))
        self.server = self.net.popen_in("beast", [sys.executable, str(HERE / "server.py")],
                                        stdout=subprocess.PIPE, text=True)
        assert self.server.stdout is not None
        self.server_port = int(self.server.stdout.readline())

    def ready_times(self) -> None:
        """Cold: nothing else up; warm: a second tunnel while the first is up."""
        tunnel_contenders = [c for c in self.contenders if c != "ceiling"]
        for round_ in range(self.cfg["ready_rounds"]):
            for contender in rotate(tunnel_contenders, round_):
                first = self.procs.open(contender, count=1, forward=0)
                self.procs.check_own_ssh(first)  # cold: not a leftover master's reuse
                second = self.procs.open(contender, count=1, forward=0)
                self.add(contender, "ready_cold_s", first["open_s"][0])
                self.add(contender, "ready_warm_s", second["open_s"][0])
                self.procs.close(second)
                self.procs.close(first)
                if round_ == 0 and contender.startswith("jt-"):
                    rss, pss = self.procs.detached_rss(contender)
                    self.add(contender, "rss_detached_mb", rss)
                    self.add(contender, "pss_detached_mb", pss)
            self.say(f"  time to ready, round {round_ + 1} done")

    def open_main(self) -> None:
        for contender in self.contenders:
            if contender != "ceiling":
                self.tunnels[contender] = self.procs.open(contender, count=1,
                                                          forward=self.server_port)
                self.procs.check_own_ssh(self.tunnels[contender])

    def bulk(self, rep: int) -> None:
        size = self.cfg["bulk_mib"] << 20
        for contender in rotate(self.contenders, rep):
            url, token, port = self.endpoints(contender)
            pids = self.procs.forwarding_pids(contender)
            cpu0 = cpu_by_pid(pids)
            down = self.client(contender, "download", url + "files/bench-big.bin", token, "1")
            fdown = self.client(contender, "down", "127.0.0.1", str(port), str(size), "1")
            fup = self.client(contender, "up", "127.0.0.1", str(port), str(size), "1")
            cpu1 = cpu_by_pid(pids)
            self.add(contender, "jupyter_down_mbps", down["mbps"][0])
            self.add(contender, "forward_down_mbps", fdown["mbps"][0])
            self.add(contender, "forward_up_mbps", fup["mbps"][0])
            if pids:
                per_gib = (1 << 30) / (3 * size)
                roles = self.tunnels[contender]["roles"]
                by_role: dict[str, float] = {}
                for pid in pids:
                    by_role[roles[pid]] = by_role.get(roles[pid], 0.0) + cpu1[pid] - cpu0[pid]
                self.add(contender, "cpu_s_per_gib", sum(by_role.values()) * per_gib)
                for role, seconds in by_role.items():
                    self.add(contender, f"cpu_s_per_gib:{role}", seconds * per_gib)

    def latency(self, rep: int) -> None:
        for contender in rotate(self.contenders, rep):
            _, _, port = self.endpoints(contender)
            idle = self.client(contender, "latency", "127.0.0.1", str(port),
                               str(self.cfg["lat_idle"]))
            self.add(contender, "latency_idle_p50_ms", idle["p50_ms"])
            self.add(contender, "latency_idle_p99_ms", idle["p99_ms"])
            with self.procs.streaming(contender, port) as stream:
                busy = self.client(contender, "latency", "127.0.0.1", str(port),
                                   str(self.cfg["lat_busy"]))
            self.raw.append({"contender": contender, "command": "stream", "result": stream})
            self.add(contender, "busy_stream_mbps", stream["mbps"])
            self.add(contender, "latency_busy_p50_ms", busy["p50_ms"])
            self.add(contender, "latency_busy_p99_ms", busy["p99_ms"])

    def connections(self, rep: int) -> None:
        for contender in rotate(self.contenders, rep):
            url, token, _ = self.endpoints(contender)
            seq = self.client(contender, "sequential", url + "api/status", token,
                              str(self.cfg["sequential"]))
            self.add(contender, "sequential_s", seq["total_s"])
            self.add(contender, "sequential_p50_ms", seq["p50_ms"])
            self.add(contender, "sequential_errors", seq["errors"])
            if seq["errors"]:
                self.say(f"  {contender}: {seq['errors']} sequential errors, e.g. "
                         f"{seq['error_samples']}")
            con = self.client(contender, "concurrent", url + "files/bench-1m.bin", token,
                              str(self.cfg["concurrent"]), str(1 << 20))
            if con["errors"]:
                self.say(f"  {contender}: {con['errors']} concurrent errors, e.g. "
                         f"{con['error_samples']}")
            self.add(contender, "concurrent_slowest_connect_ms", con["slowest_connect_ms"])
            self.add(contender, "concurrent_slowest_fetch_ms", con["slowest_fetch_ms"])
            self.add(contender, "concurrent_errors", con["errors"])

    def memory(self) -> None:
        """The main tunnels after all the traffic; then fresh processes with one and with N
        tunnels (nothing else up, so each counts its own ssh processes).  RSS sums each
        process's resident memory (shared libraries once per process); PSS shares them."""
        n = self.cfg["many"]
        tunnel_contenders = [c for c in self.contenders if c != "ceiling"]
        for contender in tunnel_contenders:
            pids = self.procs.pids_of(self.tunnels[contender])
            after = rss_mb(pids)
            self.add(contender, "rss_after_traffic_mb", after)
            self.add(contender, "pss_after_traffic_mb", pss_mb(pids))
            self.add(contender, "rss_growth_mb", after - self.rss_start[contender])
            helpers = self.procs.helper_pids(self.tunnels[contender])
            if helpers:  # on beast: apart from this machine's processes
                self.add(contender, "rss_helper_mb", rss_mb(helpers))
        self.procs.close_all()
        for contender in tunnel_contenders:
            fresh = self.procs.open(contender, count=1, forward=0)
            self.procs.check_own_ssh(fresh)
            pids = self.procs.pids_of(fresh)
            rss1, pss1 = rss_mb(pids), pss_mb(pids)
            self.procs.close(fresh)
            many = self.procs.open(contender, count=n, forward=0)
            self.procs.check_own_ssh(many)
            pids = self.procs.pids_of(many)
            rss_n, pss_n = rss_mb(pids), pss_mb(pids)
            self.procs.close(many)
            self.add(contender, "rss_1_mb", rss1)
            self.add(contender, "pss_1_mb", pss1)
            self.add(contender, "rss_n_mb", rss_n)
            self.add(contender, "pss_n_mb", pss_n)
            self.add(contender, "processes_n", len(set(pids)))
            self.add(contender, "rss_per_tunnel_mb", (rss_n - rss1) / max(1, n - 1))
            self.add(contender, "pss_per_tunnel_mb", (pss_n - pss1) / max(1, n - 1))

    def run(self) -> dict[str, Any]:
        started = time.time()
        load_before = os.getloadavg()
        code = code_state(HERE.parent)  # what runs: the checkout may change meanwhile
        finished = False
        try:
            self.setup()
            self.say("time to ready (cold, warm) ...")
            self.ready_times()
            self.open_main()
            self.rss_start = {c: rss_mb(self.procs.pids_of(self.tunnels[c]))
                              for c in self.contenders if c != "ceiling"}
            for rep in range(self.cfg["reps"]):
                self.say(f"repetition {rep + 1}/{self.cfg['reps']}: bulk, latency, connections")
                self.bulk(rep)
                self.latency(rep)
                self.connections(rep)
            self.say("memory ...")
            self.memory()
            finished = True
        finally:
            # after a failure, report cleanup errors without hiding the failure
            each(self.procs.close_all, self._stop_server, self.net.stop,
                 lambda: shutil.rmtree(self.runtime, ignore_errors=True),
                 report=None if finished else self.say)
        extra = {"prefix": self.net.prefix, "runtime_dir": str(self.runtime),
                 "sandbox_dir": str(self.net.dir), "packages": self.procs.packages}
        return {"meta": meta(started, load_before, self.cfg, self.contenders, self.baseline,
                             extra, code),
                "results": summarize(self.samples), "samples": self.samples, "raw": self.raw}

    def _stop_server(self) -> None:
        if self.server is not None:
            self.server.kill()
            self.server.wait()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny sizes: checks that the benchmark runs (the test suite's)")
    parser.add_argument("--reps", type=int, default=0,
                        help="repetitions (default 3, at least 3 unless --quick/--smoke)")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help=f"comma separated, from {','.join(KNOWN)}")
    parser.add_argument("--baseline", metavar="DIR",
                        help="a folder holding another jupyter_tunnel package: adds jt-baseline")
    args = parser.parse_args(argv)
    if args.reps and args.reps < (1 if args.quick or args.smoke else 3):
        parser.error("--reps: at least 3 (medians of fewer say little), 1 with --quick/--smoke")
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = [c for c in args.contenders if c not in KNOWN]
    if unknown:
        parser.error(f"unknown contender {', '.join(unknown)}: choose from {', '.join(KNOWN)}")
    if args.baseline and "jt-baseline" not in args.contenders:
        args.contenders.append("jt-baseline")
    if "jt-baseline" in args.contenders:
        if not args.baseline:
            parser.error("jt-baseline needs --baseline DIR (a folder holding jupyter_tunnel/)")
        if not (Path(args.baseline) / "jupyter_tunnel" / "__init__.py").is_file():
            parser.error(f"--baseline {args.baseline}: no jupyter_tunnel/__init__.py in it")
    if "openssh" not in args.contenders:
        args.contenders.insert(0, "openssh")  # the reference of every ratio
    args.contenders = list(dict.fromkeys(args.contenders))
    return args


def main() -> None:
    args = parse_args()
    start_as_root()
    bench = Bench(args)
    data = bench.run()
    print(table(data["results"], args.contenders, bench.cfg, markdown=args.markdown))
    data["goals"] = goals(data["results"], bench.cfg)
    for check in data["goals"]:
        print(f"  {'met   ' if check['met'] else 'MISSED'} {check['backend']}: {check['goal']} "
              f"(got {check['value']})")
    data["resume_cost"] = resume_cost(data["results"])
    for line in data["resume_cost"]:
        print(f"  {line}")
    data["failures"] = failures(data["results"], args.contenders)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))
        print(f"wrote {args.json}", file=sys.stderr)
    if data["failures"]:
        sys.exit("FAILED, these figures cannot be trusted:\n  " + "\n  ".join(data["failures"]))


if __name__ == "__main__":
    main()
