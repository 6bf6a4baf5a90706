"""One contender of ``kernels.py``, measured in a process of its own.

    python benchmarks/kernel_worker.py CONFIG_JSON

CONFIG_JSON: {"contender": "local"|"jt-openssh"|"jt-sshtunnel"|"five-ports", "rounds",
"warmup", "lines", "big", "repeat", "ssh_config", "alias", "python", "kernel_name"}.
The environment (set by kernels.py) holds JUPYTER_RUNTIME_DIR, JUPYTER_DATA_DIR and, for
the jupyter-tunnel contenders, JUPYTER_TUNNEL_BACKEND.  Starts one kernel, measures it,
shuts it down, and prints one JSON object on stdout (progress on stderr).  Each contender
runs in a fresh process so that jupyter_tunnel's per-process TunnelManager (which reads
JUPYTER_TUNNEL_BACKEND when it is made) and its ssh master are the contender's own.
Everything it started is stopped on the way out, also after an error or SIGTERM.
"""

from __future__ import annotations

import json
import math
import secrets
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from queue import Empty
from types import FrameType
from typing import Any

#: Run on beast through the five-ports way's ssh session: pick 5 free ports of 127.0.0.1,
#: write the connection file (key on stdin), print {"ports", "pid", "file"} and become the
#: kernel (exec: the same pid, so that `kill -INT PID` reaches it).
FIVE_PORTS_LAUNCH = r"""
import json, os, socket, sys
key = sys.stdin.readline().strip()
socks = []
for _ in range(5):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
ports = [s.getsockname()[1] for s in socks]
for s in socks:
    s.close()
names = ["shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"]
info = dict(zip(names, ports), ip="127.0.0.1", transport="tcp", key=key,
            signature_scheme="hmac-sha256", kernel_name="python3")
folder = os.path.join(os.environ["HOME"], ".five-ports")
os.makedirs(folder, mode=0o700, exist_ok=True)
path = os.path.join(folder, "kernel-%d.json" % os.getpid())
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "w") as fh:
    json.dump(info, fh)
print(json.dumps({"ports": dict(zip(names, ports)), "pid": os.getpid(), "file": path}),
      flush=True)
os.execv(sys.executable, [sys.executable, "-m", "ipykernel_launcher", "-f", path])
"""
PORT_NAMES = ["shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- talking to a kernel ------------------------------------------------------------------


def first_kernel_info(kc: Any, timeout: float = 120.0, resend: float = 0.2) -> float:
    """Send kernel_info until a reply comes (a request sent before the kernel's ports were
    reachable may be lost); the monotonic time of the first reply."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        kc.kernel_info()
        stop = time.monotonic() + resend
        while time.monotonic() < stop:
            try:
                msg = kc.get_shell_msg(timeout=max(0.001, stop - time.monotonic()))
            except Empty:
                break
            if msg["msg_type"] == "kernel_info_reply":
                return time.monotonic()
    raise RuntimeError(f"no kernel_info reply within {timeout:.0f} s")


def run_cell(kc: Any, code: str, timeout: float = 120.0) -> dict[str, Any]:
    """Execute code; wait for its execute_reply (shell) and its idle status (iopub).
    Returns the reply's content, the stdout text, the seconds to reply and to idle."""
    t0 = time.monotonic()
    msg_id = kc.execute(code, store_history=False)
    reply: dict[str, Any] | None = None
    idle = False
    out: list[str] = []
    t_reply = t_idle = 0.0
    end = t0 + timeout
    while reply is None or not idle:
        left = end - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"no {'reply' if reply is None else 'idle'} within {timeout} s "
                               f"for {code[:40]!r}")
        if not idle:
            try:
                msg = kc.get_iopub_msg(timeout=min(left, 0.05 if reply is None else left))
            except Empty:
                msg = None
            if msg is not None and msg["parent_header"].get("msg_id") == msg_id:
                kind = msg["msg_type"]
                if kind == "stream" and msg["content"]["name"] == "stdout":
                    out.append(msg["content"]["text"])
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    idle, t_idle = True, time.monotonic()
        if reply is None:
            try:
                shell = kc.get_shell_msg(timeout=0 if not idle else min(left, 1.0))
            except Empty:
                continue
            if shell["parent_header"].get("msg_id") == msg_id:
                reply, t_reply = shell["content"], time.monotonic()
    assert reply is not None
    return {"reply": reply, "stdout": "".join(out), "reply_s": t_reply - t0,
            "idle_s": max(t_reply, t_idle) - t0}


def settle(kc: Any, tries: int = 30) -> None:
    """Until a cell's idle status arrives on iopub (the SUB socket subscribes a moment after
    it connects: what the kernel publishes before is lost)."""
    for _ in range(tries):
        try:
            run_cell(kc, "pass", timeout=2.0)
            return
        except RuntimeError:
            continue
    raise RuntimeError("iopub never delivered a cell's idle status")


def measure(kc: Any, cfg: dict[str, Any], interrupt: Any) -> dict[str, Any]:
    """Everything but start and shutdown, on a ready kernel."""
    res: dict[str, Any] = {}
    settle(kc)
    for _ in range(cfg["warmup"]):
        run_cell(kc, "pass")
    rtts = [run_cell(kc, "pass")["idle_s"] * 1000 for _ in range(cfg["rounds"])]
    res["rtt_ms"] = rtts
    res["rtt_p50_ms"] = statistics.median(rtts)
    res["rtt_p99_ms"] = percentile(rtts, 99)

    lines, rates = cfg["lines"], []
    for _ in range(cfg["repeat"]):
        got = run_cell(kc, f"for i in range({lines}):\n    print(i)")
        count = got["stdout"].count("\n")
        if count != lines or got["reply"]["status"] != "ok":
            raise RuntimeError(f"printed {lines} lines, received {count} "
                               f"({got['reply']['status']})")
        rates.append(lines / got["idle_s"])
    res["lines_per_s_samples"] = rates
    res["lines_per_s"] = statistics.median(rates)

    big, times = cfg["big"], []
    for _ in range(cfg["repeat"]):
        got = run_cell(kc, f"print('x' * {big})")
        if len(got["stdout"]) != big + 1 or got["reply"]["status"] != "ok":
            raise RuntimeError(f"printed {big + 1} characters, received {len(got['stdout'])}")
        times.append(got["idle_s"])
    res["big_output_s_samples"] = times
    res["big_output_s"] = statistics.median(times)

    delays = []
    for _ in range(cfg["repeat"]):
        delays.append(interrupt_once(kc, interrupt))
    res["interrupt_s_samples"] = delays
    res["interrupt_s"] = statistics.median(delays)
    return res


def interrupt_once(kc: Any, interrupt: Any) -> float:
    """Run time.sleep(60), wait until it runs (busy on iopub, then 0.5 s), interrupt it:
    seconds from the interrupt's start to the KeyboardInterrupt reply."""
    msg_id = kc.execute("import time; time.sleep(60)", store_history=False)
    end = time.monotonic() + 30
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.01, end - time.monotonic()))
        if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "busy"):
            break
    time.sleep(0.5)
    t0 = time.monotonic()
    interrupt()
    while True:
        reply = kc.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    took = time.monotonic() - t0
    if reply["content"].get("ename") != "KeyboardInterrupt":
        raise RuntimeError(f"the interrupt gave {reply['content']}")
    # its idle status, so that the next cell starts clean
    while True:
        msg = kc.get_iopub_msg(timeout=30)
        if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"):
            return took


# --- the contenders -----------------------------------------------------------------------


def with_manager(cfg: dict[str, Any]) -> dict[str, Any]:
    """local, jt-openssh, jt-sshtunnel: jupyter_client's KernelManager starts the kernel
    (for the jt contenders through the jupyter-tunnel provisioner)."""
    from jupyter_client.manager import KernelManager

    km = KernelManager(kernel_name=cfg["kernel_name"])
    kc = None
    res: dict[str, Any] = {}
    try:
        t0 = time.monotonic()
        km.start_kernel()
        kc = km.client()
        kc.start_channels()
        res["cold_start_s"] = first_kernel_info(kc) - t0
        if cfg["contender"] != "local":
            res["tunnel"] = tunnel_facts()
        say(f"  {cfg['contender']}: first kernel_info reply after {res['cold_start_s']:.2f} s")
        res.update(measure(kc, cfg, km.interrupt_kernel))
        kc.stop_channels()
        kc = None
        t0 = time.monotonic()
        km.shutdown_kernel(now=False)
        res["shutdown_s"] = time.monotonic() - t0
    finally:
        if kc is not None:
            kc.stop_channels()
        if km.has_kernel:
            km.shutdown_kernel(now=True)
    return res


def tunnel_facts() -> dict[str, Any]:
    """The kernel's tunnel: its backend class (checked against the contender) and whether
    its forwards resume."""
    from jupyter_tunnel import api

    tunnels = api.default_manager().tunnels()
    if len(tunnels) != 1:
        raise RuntimeError(f"expected the kernel's one tunnel, found {len(tunnels)}")
    t = tunnels[0]
    d = t.to_dict()
    return {"backend": type(t.backend).__name__, "resume": d.get("resume") is not None,
            "forwards": len(d.get("forwards") or [])}


class FivePorts:
    """The way other tools do it: one OpenSSH ControlMaster to beast (ProxyJump unicorn),
    the kernel started through it, and ``ssh -O forward -L`` for each of its five ports."""

    def __init__(self, cfg: dict[str, Any], folder: str) -> None:
        self.cfg = cfg
        self.sock = f"{folder}/five-ports-{secrets.token_hex(3)}.sock"
        self.ssh = ["ssh", "-F", cfg["ssh_config"], "-S", self.sock]
        self.alias = cfg["alias"]
        self.master_up = False
        self.kernel: subprocess.Popen[str] | None = None
        self.pid = 0
        self.file = ""

    def start(self) -> dict[str, Any]:
        """Master, kernel, forwards: the connection info of the local ports."""
        subprocess.run([*self.ssh, "-M", "-fN", "-o", "ExitOnForwardFailure=yes", self.alias],
                       check=True, timeout=60, stdin=subprocess.DEVNULL)
        self.master_up = True
        key = secrets.token_hex(32)
        remote = shlex.join([self.cfg["python"], "-c", FIVE_PORTS_LAUNCH])
        self.kernel = subprocess.Popen([*self.ssh, self.alias, remote], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
        assert self.kernel.stdin is not None and self.kernel.stdout is not None
        self.kernel.stdin.write(key + "\n")
        self.kernel.stdin.flush()
        line = self.kernel.stdout.readline()
        if not line:
            raise RuntimeError("the kernel's ssh session on beast ended before it started")
        started = json.loads(line)
        self.pid, self.file = int(started["pid"]), started["file"]
        info: dict[str, Any] = {"ip": "127.0.0.1", "transport": "tcp", "key": key,
                                "signature_scheme": "hmac-sha256"}
        forwards = []
        for name in PORT_NAMES:
            info[name] = free_local_port()
            forwards += ["-L", f"127.0.0.1:{info[name]}:127.0.0.1:{started['ports'][name]}"]
        subprocess.run([*self.ssh, "-O", "forward", *forwards, self.alias], check=True,
                       timeout=30, capture_output=True)
        return info

    def interrupt(self) -> None:
        subprocess.run([*self.ssh, self.alias, f"kill -INT {self.pid}"], check=True,
                       timeout=30, stdin=subprocess.DEVNULL)

    def shutdown(self, kc: Any) -> None:
        """shutdown_request on the control channel, the kernel's exit (its ssh session
        ends), its connection file removed, the master ended."""
        kc.shutdown()
        kc.stop_channels()
        assert self.kernel is not None
        self.kernel.wait(timeout=30)
        subprocess.run([*self.ssh, self.alias, f"rm -f {shlex.quote(self.file)}"],
                       check=True, timeout=30, stdin=subprocess.DEVNULL)
        self.file = ""
        self.stop_master()

    def stop_master(self) -> None:
        if self.master_up:
            self.master_up = False
            subprocess.run([*self.ssh, "-O", "exit", self.alias], capture_output=True,
                           timeout=30, check=False)

    def cleanup(self) -> None:
        """After an error: the kernel, its file, the master (kernels.py also removes what
        is left on beast and here)."""
        if self.kernel is not None and self.kernel.poll() is None:
            if self.pid and self.master_up:
                subprocess.run([*self.ssh, self.alias, f"kill -KILL {self.pid}"],
                               capture_output=True, timeout=30, check=False)
            self.kernel.kill()
            self.kernel.wait()
        if self.file and self.master_up:
            subprocess.run([*self.ssh, self.alias, f"rm -f {shlex.quote(self.file)}"],
                           capture_output=True, timeout=30, check=False)
        self.stop_master()


def five_ports(cfg: dict[str, Any], folder: str) -> dict[str, Any]:
    from jupyter_client import BlockingKernelClient

    way = FivePorts(cfg, folder)
    kc = None
    res: dict[str, Any] = {}
    try:
        t0 = time.monotonic()
        info = way.start()
        kc = BlockingKernelClient()
        kc.load_connection_info(info)
        kc.start_channels()
        res["cold_start_s"] = first_kernel_info(kc) - t0
        say(f"  five-ports: first kernel_info reply after {res['cold_start_s']:.2f} s")
        res.update(measure(kc, cfg, way.interrupt))
        t0 = time.monotonic()
        way.shutdown(kc)
        kc = None
        res["shutdown_s"] = time.monotonic() - t0
    finally:
        if kc is not None:
            kc.stop_channels()
        way.cleanup()
    return res


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(128 + signum)


def main() -> None:
    import os

    signal.signal(signal.SIGTERM, _exit_on_signal)
    cfg = json.loads(sys.argv[1])
    if cfg["contender"] == "five-ports":
        res = five_ports(cfg, os.environ["JUPYTER_RUNTIME_DIR"])
    else:
        res = with_manager(cfg)
    if cfg["contender"].startswith("jt-"):
        import jupyter_tunnel

        res["package"] = str(jupyter_tunnel.__file__)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
