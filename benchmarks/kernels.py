"""Benchmark remote kernels: jupyter_tunnel's provisioner beside a local kernel and the
five-ports way, in one run on the sandbox network.

    .venv/bin/python benchmarks/kernels.py [--reps N] [--quick] [--json FILE]

Builds the test network (this machine -> unicorn -> beast in network namespaces, beast
reachable only through unicorn's sshd, a Jupyter server on beast), then measures, with the
contenders alternated within each repetition and each run in a fresh process
(``kernel_worker.py``):

- ``local``: an ipykernel started here by jupyter_client's KernelManager (the baseline);
- ``jt-openssh``, ``jt-sshtunnel``: a kernel on beast through the ``jupyter-tunnel`` kernel
  provisioner (kernelspec ``beast-python3`` in a private JUPYTER_DATA_DIR), backend chosen
  with JUPYTER_TUNNEL_BACKEND;
- ``five-ports``: the way other tools do it: an OpenSSH ControlMaster to beast via unicorn,
  the kernel started through it with a connection file of five free ports of beast, and
  ``ssh -O forward -L`` for each of the five ports; a BlockingKernelClient on the local ports.

Figures: time to the first kernel_info reply, the round trip of ``pass`` (p50, p99), a cell
printing N short lines (lines/s), a 10 MB output, the interrupt of ``time.sleep(60)`` and
the shutdown; each remote figure also as a ratio to ``local`` and to ``five-ports``.  Prints
a Markdown table, writes JSON with the metadata of run.py (meta.py).  Fails (exit 1) when a
contender's run fails, a jt contender ran on the wrong backend, or a run left a process
behind.  Needs root (namespaces) and sshd; run it in private namespaces (see
benchmarks/README.md).  Everything it starts is removed at the end, also after an error,
Ctrl-C, SIGTERM or SIGHUP.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
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
from meta import code_state, meta  # noqa: E402

CONTENDERS = ["local", "jt-openssh", "jt-sshtunnel", "five-ports"]
REMOTE = ["jt-openssh", "jt-sshtunnel", "five-ports"]
REFERENCES = ["local", "five-ports"]
#: the namespaces' prefix: "jtkb" + 4 random hex digits (never the tests' or run.py's)
PREFIX = "jtkb"
#: in the environment of every process a worker starts: what is left is found by it
MARKER = "JT_KBENCH"

FULL = {"reps": 3, "rounds": 300, "warmup": 30, "lines": 20_000, "big": 10_000_000,
        "repeat": 3}
QUICK = {"reps": 1, "rounds": 50, "warmup": 10, "lines": 2_000, "big": 1_000_000,
         "repeat": 1}

#: (key, label, unit, which way is better)
ROWS: list[tuple[str, str, str, str]] = [
    ("cold_start_s", "start to first kernel_info reply (cold)", "s", "lower"),
    ("rtt_p50_ms", "execute `pass`, round trip p50", "ms", "lower"),
    ("rtt_p99_ms", "execute `pass`, round trip p99", "ms", "lower"),
    ("lines_per_s", "{lines} printed lines, received on iopub", "lines/s", "higher"),
    ("big_output_s", "{big_mb} MB output (one print)", "s", "lower"),
    ("interrupt_s", "interrupt `time.sleep(60)` to KeyboardInterrupt reply", "s", "lower"),
    ("shutdown_s", "shutdown", "s", "lower"),
]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the report (pure) ----------------------------------------------------------------------


def summarize(samples: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    """The median of each contender's samples of each figure."""
    return {c: {k: statistics.median(v) for k, v in figures.items() if v}
            for c, figures in samples.items()}


def ratios(results: dict[str, dict[str, float]]) -> dict[str, dict[str, dict[str, float]]]:
    """{contender: {"vs_local"|"vs_five-ports": {key: value / reference's value}}} for the
    remote contenders (a ratio above 1 is slower for times, faster for lines/s)."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for contender in REMOTE:
        if contender not in results:
            continue
        mine = results[contender]
        for ref in REFERENCES:
            if ref == contender or ref not in results:
                continue
            table = out.setdefault(contender, {}).setdefault(f"vs_{ref}", {})
            for key, *_ in ROWS:
                if key in mine and results[ref].get(key):
                    table[key] = mine[key] / results[ref][key]
    return out


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _label(label: str, cfg: dict[str, Any]) -> str:
    return label.format(lines=f"{cfg['lines']:,}", big_mb=f"{cfg['big'] / 1e6:g}")


def table(results: dict[str, dict[str, float]], contenders: list[str],
          cfg: dict[str, Any]) -> str:
    """Two Markdown tables: the figures (medians), then the ratios of the remote ones."""
    present = [c for c in contenders if c in results]
    lines = ["| figure | better | " + " | ".join(f"`{c}`" for c in present) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in present) + " |"]
    for key, label, unit, better in ROWS:
        cells = [_fmt(results[c].get(key)) for c in present]
        lines.append(f"| {_label(label, cfg)} ({unit}) | {better} | " + " | ".join(cells) + " |")
    got = ratios(results)
    cols = [(c, ref) for ref in REFERENCES for c in present
            if c in REMOTE and c != ref and f"vs_{ref}" in got.get(c, {})]
    if cols:
        lines += ["", "| ratio (value / reference) | " + " | ".join(
            f"`{c}` / `{ref}`" for c, ref in cols) + " |",
            "| --- | " + " | ".join("---:" for _ in cols) + " |"]
        for key, label, _unit, better in ROWS:
            cells = []
            for c, ref in cols:
                value = got[c][f"vs_{ref}"].get(key)
                cells.append("-" if value is None else f"{value:.2f}x")
            lines.append(f"| {_label(label, cfg)} ({better} is better) | " + " | ".join(cells)
                         + " |")
    return "\n".join(lines)


# --- the run ------------------------------------------------------------------------------


class KernelBench:
    """The network, the kernelspec, the contenders' worker runs, the samples."""

    def __init__(self, args: argparse.Namespace) -> None:
        from jupyter_tunnel.sandbox import Sandbox

        self.cfg = (QUICK if args.quick else FULL).copy()
        if args.reps:
            self.cfg["reps"] = args.reps
        self.contenders: list[str] = args.contenders
        self.dir = Path(tempfile.mkdtemp(prefix="jt-kbench-"))
        self.net = Sandbox(prefix=PREFIX + secrets.token_hex(2), log=say)
        self.samples: dict[str, dict[str, list[float]]] = {c: {} for c in self.contenders}
        self.raw: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.worker: subprocess.Popen[str] | None = None
        self.baseline_beast: set[int] = set()
        self.runs = 0

    # environment -------------------------------------------------------------------------
    def env_for(self, contender: str, run_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("JUPYTER_", "JPY_"))}
        env.update({"JUPYTER_RUNTIME_DIR": str(run_dir / "runtime"),
                    "JUPYTER_DATA_DIR": str(self.dir / "data"),
                    "JUPYTER_CONFIG_DIR": str(self.dir / "config"),
                    MARKER: str(run_dir), "PYTHONUNBUFFERED": "1",
                    # the package of this checkout (also for the provisioner's entry point)
                    "PYTHONPATH": str(HERE.parent)})
        if contender.startswith("jt-"):
            env["JUPYTER_TUNNEL_BACKEND"] = contender.removeprefix("jt-")
        return env

    def setup(self) -> None:
        self.net.start()
        (self.dir / "config").mkdir()
        env = {**os.environ, "JUPYTER_DATA_DIR": str(self.dir / "data"),
               "PYTHONPATH": str(HERE.parent)}
        script = ("import sys; from jupyter_tunnel.kernels import specs; "
                  "print(specs.install('beast', ['unicorn'], 'python3', "
                  "{'display_name': 'Python 3', 'language': 'python'}, "
                  "ssh_config=sys.argv[1])['name'])")
        done = subprocess.run([sys.executable, "-c", script, str(self.net.ssh_config)],
                              env=env, capture_output=True, text=True, check=False, cwd=self.dir)
        if done.returncode != 0 or done.stdout.strip() != "beast-python3":
            raise RuntimeError(f"kernelspec install failed: {done.stderr or done.stdout}")
        self.baseline_beast = self.beast_pids()

    def beast_pids(self) -> set[int]:
        ns = self.net.hosts["beast"].netns
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True,
                             check=False).stdout if ns else ""
        return {int(p) for p in out.split() if p.isdigit()}

    # one worker run ------------------------------------------------------------------------
    def run_one(self, contender: str) -> None:
        self.runs += 1
        run_dir = self.dir / f"run{self.runs}-{contender}"
        (run_dir / "runtime").mkdir(parents=True)
        wcfg = {"contender": contender, "ssh_config": str(self.net.ssh_config),
                "alias": "beast-via-unicorn", "python": sys.executable,
                "kernel_name": "python3" if contender == "local" else "beast-python3",
                **{k: self.cfg[k] for k in ("rounds", "warmup", "lines", "big", "repeat")}}
        argv = [sys.executable, str(HERE / "kernel_worker.py"), json.dumps(wcfg)]
        t0 = time.monotonic()
        self.worker = subprocess.Popen(argv, env=self.env_for(contender, run_dir),
                                       cwd=run_dir, stdout=subprocess.PIPE, text=True,
                                       start_new_session=True)
        try:
            out, _ = self.worker.communicate(timeout=900)
        finally:
            self.stop_worker()
        code, self.worker = self.worker.returncode, None
        left = self.leftovers(run_dir)
        if left:
            self.failures.append(f"{contender} (run {self.runs}) left processes: {left}")
            say(f"  {contender}: LEFT BEHIND {left}")
        if code != 0:
            self.failures.append(f"{contender} (run {self.runs}) failed, exit {code}")
            say(f"  {contender}: FAILED (exit {code})")
            return
        res = json.loads(out)
        res["wall_s"] = time.monotonic() - t0
        self.raw.append({"contender": contender, "run": self.runs, "result": res})
        want = {"jt-openssh": "OpenSSHBackend", "jt-sshtunnel": "SSHTunnelBackend"}
        if contender in want and res.get("tunnel", {}).get("backend") != want[contender]:
            self.failures.append(f"{contender} ran on {res.get('tunnel')}, not "
                                 f"{want[contender]}")
        package = HERE.parent / "jupyter_tunnel" / "__init__.py"
        if contender in want and res.get("package") != str(package):
            self.failures.append(f"{contender} imported {res.get('package')}, not {package}")
        for key, *_ in ROWS:
            if key in res:
                self.samples[contender].setdefault(key, []).append(float(res[key]))
            else:
                self.failures.append(f"{contender} (run {self.runs}): no {key}")
        say(f"  {contender}: " + ", ".join(f"{k} {_fmt(res.get(k))}" for k, *_ in ROWS))

    def stop_worker(self) -> None:
        """The worker's process group: SIGTERM (it cleans up), then SIGKILL."""
        proc = self.worker
        if proc is None or proc.poll() is not None:
            return
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

    def leftovers(self, run_dir: Path) -> list[str]:
        """What a worker run left: processes here with its marker, on beast beyond the
        sandbox's own (after a grace period); killed, and named."""
        from jupyter_tunnel.sandbox_procs import _kill_pids, _pids_with_env

        end = time.monotonic() + 5
        while True:
            here = _pids_with_env(MARKER, str(run_dir))
            there = self.beast_pids() - self.baseline_beast
            if not (here or there) or time.monotonic() > end:
                break
            time.sleep(0.1)
        names = [f"{pid}:{_cmdline(pid)}" for pid in sorted(here | there)]
        _kill_pids(here | there)
        return [n for n in names if not n.endswith(":?")]

    def cleanup_all(self) -> None:
        """Whatever any run left: workers, their processes here (marker), kernels on beast
        (the sandbox kills what runs in its namespaces), the sandbox, the folder."""
        end_run(self.stop_worker, self.net, MARKER, self.dir, say)

    def run(self) -> dict[str, Any]:
        started = time.time()
        load_before = os.getloadavg()
        code = code_state(HERE.parent)
        try:
            self.setup()
            for rep in range(self.cfg["reps"]):
                say(f"repetition {rep + 1}/{self.cfg['reps']}")
                for contender in rotate(self.contenders, rep):
                    self.run_one(contender)
        finally:
            self.cleanup_all()
        extra = {"prefix": self.net.prefix, "work_dir": str(self.dir),
                 "sandbox_dir": str(self.net.dir), "benchmark": "kernels",
                 "five_ports": "ssh -M -S SOCK -fN beast-via-unicorn (ProxyJump unicorn); "
                               "kernel started by `ssh -S SOCK beast-via-unicorn PYTHON -c "
                               "LAUNCH` (5 free ports, connection file, exec ipykernel); "
                               "ssh -S SOCK -O forward -L x5; interrupt by "
                               "`ssh -S SOCK beast-via-unicorn kill -INT PID`",
                 "versions": package_versions(KERNEL_PACKAGES)}
        results = summarize(self.samples)
        return {"meta": meta(started, load_before, self.cfg, self.contenders, None, extra,
                             code),
                "results": results, "ratios": ratios(results), "samples": self.samples,
                "raw": self.raw, "failures": self.failures}


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:120] or "?"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=0,
                        help="fresh kernels per contender (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, one repetition: does it run?")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help=f"comma separated, from {','.join(CONTENDERS)}")
    args = parser.parse_args(argv)
    if args.reps < 0:
        parser.error("--reps: at least 1")
    args.contenders = list(dict.fromkeys(c.strip() for c in args.contenders.split(",")
                                         if c.strip()))
    unknown = [c for c in args.contenders if c not in CONTENDERS]
    if unknown:
        parser.error(f"unknown contender {', '.join(unknown)}: choose from "
                     f"{', '.join(CONTENDERS)}")
    return args


def main() -> None:
    args = parse_args()
    start_as_root()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started in background
    bench = KernelBench(args)
    try:
        data = bench.run()
    except KeyboardInterrupt:
        sys.exit("interrupted: everything it started is removed")
    print(table(data["results"], args.contenders, bench.cfg))
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))
        say(f"wrote {args.json}")
    if data["failures"]:
        sys.exit("FAILED:\n  " + "\n  ".join(data["failures"]))


if __name__ == "__main__":
    main()
