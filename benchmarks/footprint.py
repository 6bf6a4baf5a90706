"""What jupyter_tunnel costs in processes and memory, per host: one user's share.

    .venv/bin/python benchmarks/footprint.py [--reps N] [--quick] [--json FILE]

Builds the test network (this machine -> unicorn -> beast in network namespaces, beast
reachable only through unicorn's sshd, a Jupyter server on beast), installs the kernelspec
``beast-python3`` with ``jupyter_tunnel.kernels.service.install_remote`` into a private
JUPYTER_DATA_DIR, then, for each backend (``openssh``, ``sshtunnel``) in a fresh worker
process (``footprint_worker.py``: an in-process TunnelManager, as in a user's Jupyter
server), takes a baseline and measures four steps, each as a delta against the previous:

1. one tunnel ``beast via unicorn``;
2. a second tunnel to the same hosts;
3. one remote kernel (jupyter_client's KernelManager, kernelspec ``beast-python3``) up to
   its first kernel_info reply;
4. a second remote kernel.

Per host (this machine, unicorn, beast: the sandbox's hosts are network namespaces sharing
one pid space, so a process is placed by /proc/PID/ns/net), it counts the processes that
appeared after the baseline and carry the run's marker (``JT_FOOTPRINT``, here; the
sandbox's ``JT_SANDBOX``, in every ssh session on unicorn and beast) or descend from the
sandbox's sshd, with their PSS (/proc/PID/smaps_rollup) and RSS (/proc/PID/status).  The
worker itself is in the baseline: its growth is reported apart.  Per sshd (unicorn, beast):
its processes, the TCP connections into its port, the logins it accepted and its open
sessions (its log: ``Starting session`` minus ``Close session``).  Repeats each backend
``--reps`` times (alternating), prints the medians as Markdown tables, writes JSON with
the metadata of run.py (meta.py).  Fails (exit 1) when a worker fails, ran on the wrong
backend, or left a process behind.  Needs root (namespaces) and sshd; run it in private
namespaces (see benchmarks/README.md).  Everything it starts is removed at the end, also
after an error, Ctrl-C, SIGTERM or SIGHUP.

The processes and what is counted: footprint_procs.py; the tables: footprint_report.py.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from driver import (  # noqa: E402
    KERNEL_PACKAGES,
    end_run,
    package_versions,
    rotate,
    start_as_root,
)
from footprint_procs import HOSTS, MARKER, Census, _netns, by_role, processes  # noqa: E402
from footprint_report import STEPS, USERS, deltas, roles_table, summarize, table  # noqa: E402
from meta import code_state, meta  # noqa: E402

BACKENDS = ["openssh", "sshtunnel"]
#: the namespaces' prefix: "jtfp" + 4 random hex digits (never the tests' or the others')
PREFIX = "jtfp"

FULL: dict[str, Any] = {"reps": 3, "settle_s": 2.0}
QUICK: dict[str, Any] = {"reps": 1, "settle_s": 1.0}


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the run --------------------------------------------------------------------------------


class Footprint:
    """The network, the kernelspec, the workers, the snapshots."""

    def __init__(self, args: argparse.Namespace) -> None:
        from jupyter_tunnel.sandbox import Sandbox

        self.cfg = (QUICK if args.quick else FULL).copy()
        if args.reps:
            self.cfg["reps"] = args.reps
        self.backends: list[str] = args.backends
        self.dir = Path(tempfile.mkdtemp(prefix="jt-footprint-"))
        self.net = Sandbox(prefix=PREFIX + secrets.token_hex(2), log=say)
        self.samples: dict[str, dict[str, dict[str, list[float]]]] = {
            b: {} for b in self.backends}
        self.role_samples: dict[str, dict[str, dict[str, list[float]]]] = {
            b: {} for b in self.backends}
        self.raw: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.worker: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.runs = 0
        self.census = Census(self.net)
        self.installed: dict[str, Any] = {}

    # setup -------------------------------------------------------------------------------
    def setup(self) -> None:
        self.net.start()
        for name in ("unicorn", "beast"):
            proc = self.net.hosts[name]._proc
            assert proc is not None
            self.census.sshd_pid[name] = proc.pid
            self.census.host_net[name] = _netns(proc.pid)
        if len({self.census.here_net, *self.census.host_net.values()}) != 3:
            raise RuntimeError(f"hosts do not have network namespaces of their own: "
                               f"{self.census.here_net}, {self.census.host_net}")
        (self.dir / "config").mkdir()
        run_dir = self.dir / "install"
        (run_dir / "runtime").mkdir(parents=True)
        before = {(p, i["start"]) for p, i in processes().items()}
        script = ("import json, sys; from jupyter_tunnel.kernels import service; "
                  "print(json.dumps(service.install_remote('beast', ['unicorn'], "
                  "kernels=['python3'], ssh_config=sys.argv[1])))")
        done = subprocess.run([sys.executable, "-c", script, str(self.net.ssh_config)],
                              env=self.env_for("", run_dir), capture_output=True, text=True,
                              check=False, cwd=run_dir, timeout=120)
        try:
            self.installed = json.loads(done.stdout)[0]
        except (ValueError, IndexError, KeyError):
            self.installed = {}
        if done.returncode != 0 or self.installed.get("name") != "beast-python3":
            raise RuntimeError(f"install_remote failed: {done.stderr[-2000:] or done.stdout}")
        left = self.leftovers(run_dir, before)
        if left:
            raise RuntimeError(f"install_remote left processes: {left}")

    def env_for(self, backend: str, run_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("JUPYTER_", "JPY_"))}
        env.update({"JUPYTER_RUNTIME_DIR": str(run_dir / "runtime"),
                    "JUPYTER_DATA_DIR": str(self.dir / "data"),
                    "JUPYTER_CONFIG_DIR": str(self.dir / "config"),
                    MARKER: str(run_dir), "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": str(HERE.parent)})
        if backend:
            env["JUPYTER_TUNNEL_BACKEND"] = backend
        return env

    # one worker run --------------------------------------------------------------------------
    def _read(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"the worker said nothing for {timeout:.0f} s") from None
        if line is None:
            raise RuntimeError("the worker exited early")
        return dict(json.loads(line))

    def _send(self, text: str) -> None:
        assert self.worker is not None and self.worker.stdin is not None
        self.worker.stdin.write(text)
        self.worker.stdin.flush()

    def run_one(self, backend: str) -> None:
        self.runs += 1
        run_dir = self.dir / f"run{self.runs}-{backend}"
        (run_dir / "runtime").mkdir(parents=True)
        wcfg = {"backend": backend, "ssh_config": str(self.net.ssh_config),
                "kernel_name": self.installed["name"]}
        argv = [sys.executable, str(HERE / "footprint_worker.py"), json.dumps(wcfg)]
        self.lines = queue.Queue()
        self.worker = subprocess.Popen(argv, env=self.env_for(backend, run_dir), cwd=run_dir,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, start_new_session=True)
        threading.Thread(target=self._pump, args=(self.worker, self.lines),
                         daemon=True).start()
        record: dict[str, Any] = {"backend": backend, "run": self.runs, "steps": [],
                                  "snapshots": []}
        baseline: set[tuple[int, int]] = set()
        ok = False
        try:
            ready = self._read(120)
            package = HERE.parent / "jupyter_tunnel" / "__init__.py"
            if ready.get("package") != str(package):
                raise RuntimeError(f"the worker imported {ready.get('package')}, not {package}")
            time.sleep(self.cfg["settle_s"])
            baseline = {(p, i["start"]) for p, i in processes().items()}
            snaps = [self.census.snapshot(baseline, run_dir, self.worker.pid)]
            for number, name in enumerate(STEPS, 1):
                self._send("next\n")
                done = self._read(300)
                if done.get("step") != number:
                    raise RuntimeError(f"step {number} ({name}): the worker said {done}")
                record["steps"].append(done)
                time.sleep(self.cfg["settle_s"])
                snaps.append(self.census.snapshot(baseline, run_dir, self.worker.pid))
                say(f"  {backend} {name}: " + ", ".join(
                    f"{h} {snaps[-1]['figures'][f'{h}_processes']:g} proc "
                    f"{snaps[-1]['figures'][f'{h}_pss_mb']:.1f} MB PSS" for h in HOSTS))
            record["snapshots"] = snaps
            self.check_backend(backend, record["steps"])
            self._send("\n")
            closed = self._read(120)
            if closed.get("problems"):
                raise RuntimeError(f"closing: {closed['problems']}")
            self.worker.wait(timeout=60)
            if self.worker.returncode != 0:
                raise RuntimeError(f"the worker exited {self.worker.returncode}")
            ok = True
        except Exception as exc:
            self.failures.append(f"{backend} (run {self.runs}): {type(exc).__name__}: {exc}")
            say(f"  {backend}: FAILED: {exc}")
        finally:
            self.stop_worker()
            self.worker = None
        left = self.leftovers(run_dir, baseline)
        if left:
            self.failures.append(f"{backend} (run {self.runs}) left processes: {left}")
            say(f"  {backend}: LEFT BEHIND {left}")
        self.raw.append(record)
        if ok:
            for step, figures in deltas(record["snapshots"]).items():
                target = self.samples[backend].setdefault(step, {})
                for key, value in figures.items():
                    target.setdefault(key, []).append(value)
            for name, figures in by_role(record["snapshots"][-1]["processes"]).items():
                target = self.role_samples[backend].setdefault(name, {})
                for key, value in figures.items():
                    target.setdefault(key, []).append(value)

    def check_backend(self, backend: str, steps: list[dict[str, Any]]) -> None:
        want = {"openssh": "OpenSSHBackend", "sshtunnel": "SSHTunnelBackend"}[backend]
        got = [s.get("backend") for s in steps]
        if any(g != want for g in got):
            raise RuntimeError(f"ran on {got}, not {want}")
        kernels = [s.get("provisioner") for s in steps[2:]]
        if any(k != "TunnelProvisioner" for k in kernels):
            raise RuntimeError(f"kernels started by {kernels}, not TunnelProvisioner")

    @staticmethod
    def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def stop_worker(self) -> None:
        """The worker's process group: SIGTERM (it cleans up), then SIGKILL."""
        proc = self.worker
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(OSError, ValueError):
            if proc.stdin is not None:
                proc.stdin.close()  # it closes everything and exits on EOF
        try:
            proc.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            pass
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=wait)
                break
            except subprocess.TimeoutExpired:
                continue

    def leftovers(self, run_dir: Path, baseline: set[tuple[int, int]]) -> list[str]:
        """What a run left (after a grace period): processes of the run here (its marker),
        on unicorn and beast those not in the baseline; killed, and named."""
        from jupyter_tunnel.sandbox_procs import _kill_pids

        end = time.monotonic() + 20
        while True:
            table_ = processes()
            left = {p: i for p, i in table_.items() if (p, i["start"]) not in baseline
                    and self.census.counted(p, i, run_dir, table_)}
            if not left or time.monotonic() > end:
                break
            time.sleep(0.2)
        _kill_pids(set(left))
        return [f"{self.census.host_of(i)}:{p}:{i['cmd']}" for p, i in sorted(left.items())]

    def cleanup_all(self) -> None:
        """Whatever any run left: the worker, its processes here (marker), what runs in the
        sandbox's namespaces (the sandbox ends it), the sandbox, the folder."""
        end_run(self.stop_worker, self.net, MARKER, self.dir, say)

    def run(self) -> dict[str, Any]:
        started = time.time()
        load_before = os.getloadavg()
        code = code_state(HERE.parent)
        try:
            self.setup()
            for rep in range(self.cfg["reps"]):
                say(f"repetition {rep + 1}/{self.cfg['reps']}")
                for backend in rotate(self.backends, rep):
                    self.run_one(backend)
        finally:
            self.cleanup_all()
        extra = {"prefix": self.net.prefix, "work_dir": str(self.dir),
                 "sandbox_dir": str(self.net.dir), "benchmark": "footprint",
                 "kernelspec": self.installed, "users": USERS, "steps": STEPS,
                 "sshd": "MaxStartups 100:30:200, MaxSessions 100, LogLevel VERBOSE "
                         "(the sandbox's sshd_config on unicorn and beast)",
                 "versions": {**package_versions(KERNEL_PACKAGES),
                              "sshd": _sshd_version()}}
        results = summarize(self.samples)
        return {"meta": meta(started, load_before, self.cfg, self.backends, None, extra,
                             code),
                "results": results, "roles": summarize(self.role_samples),
                "samples": self.samples, "role_samples": self.role_samples, "raw": self.raw,
                "failures": self.failures}


def _sshd_version() -> str:
    return subprocess.run(["/usr/sbin/sshd", "-V"], capture_output=True, text=True,
                          check=False).stderr.strip()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=0,
                        help="fresh workers per backend (default 3, at least 3 unless "
                             "--quick; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="one repetition: does it run?")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help=f"comma separated, from {','.join(BACKENDS)}")
    args = parser.parse_args(argv)
    if args.reps and args.reps < (1 if args.quick else 3):
        parser.error("--reps: at least 3 (medians of fewer say little), 1 with --quick")
    args.backends = list(dict.fromkeys(b.strip() for b in args.backends.split(",")
                                       if b.strip()))
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown or not args.backends:
        parser.error(f"unknown backend {', '.join(unknown)}: choose from "
                     f"{', '.join(BACKENDS)}")
    return args


def main() -> None:
    args = parse_args()
    start_as_root()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started in background
    bench = Footprint(args)
    try:
        data = bench.run()
    except KeyboardInterrupt:
        sys.exit("interrupted: everything it started is removed")
    print(table(data["results"], args.backends))
    print()
    print(roles_table(data["roles"], args.backends))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))
        say(f"wrote {args.json}")
    if data["failures"]:
        sys.exit("FAILED:\n  " + "\n  ".join(data["failures"]))


if __name__ == "__main__":
    main()
