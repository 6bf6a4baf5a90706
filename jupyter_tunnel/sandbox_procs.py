"""Process and shell helpers of the sandbox network (see ``sandbox.py``)."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

# Run inside a host: print a free TCP port of 127.0.0.1 in [argv1, argv2].
_FREE_PORT = """
import random, socket, sys
lo, hi = int(sys.argv[1]), int(sys.argv[2])
for port in random.sample(range(lo, hi + 1), hi - lo + 1):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            continue
    print(port)
    break
"""
# Run inside a host: poll Jupyter's api/status (token on stdin) until 200 (exit 0),
# the server process is gone (3) or the timeout passes (2).
_WAIT_JUPYTER = """
import sys, time, urllib.request
port, pid, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
req = urllib.request.Request(f"http://127.0.0.1:{port}/api/status",
                             headers={"Authorization": "token " + sys.stdin.read().strip()})
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
end = time.monotonic() + timeout
while time.monotonic() < end:
    try:
        with opener.open(req, timeout=2) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                sys.exit(3)
    except OSError:
        sys.exit(3)
    time.sleep(0.1)
sys.exit(2)
"""


class SandboxError(Exception):
    """The sandbox could not be built; the message says what to do."""


def _run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run argv, raise SandboxError with its stderr when it fails."""
    res = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip()
        raise SandboxError(f"command failed ({res.returncode}): {shlex.join(argv)}: {msg}")
    return res


def _out(argv: list[str]) -> str:
    """Stdout of argv, empty when it fails (for clean-up, which must not raise)."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    except OSError:
        return ""


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _netns_usable() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    return subprocess.run(["ip", "netns", "list"], capture_output=True, check=False).returncode == 0


def _pids_with_env(var: str, value: str) -> set[int]:
    """Pids of the processes started with var=value in their environment."""
    needle, pids = f"\0{var}={value}\0".encode(), set()
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and needle in b"\0" + Path(entry.path, "environ").read_bytes():
                pids.add(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    """The process exists and is no zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


def _kill_pids(pids: set[int], timeout: float = 3.0) -> None:
    """SIGTERM the pids, SIGKILL those still alive after timeout."""
    pids.discard(os.getpid())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        end = time.monotonic() + timeout
        while pids and time.monotonic() < end:
            pids = {p for p in pids if _alive(p)}
            time.sleep(0.02)
        if not pids:
            return


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
