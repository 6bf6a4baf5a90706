"""Ending an orphaned resume helper, on its host: the remote side of ``cleanup``.

Embedded after ``frames`` and ``helper_start`` in a program of its own (see ``orphans``);
stdlib only, Python 3.8 syntax at runtime.  It reads one JSON line from stdin, ``{"id",
"pid", "started", "wait"}``, and prints one JSON line: ``{"result", "detail"}``, where
result is ``ended`` (SIGTERM, or SIGKILL after ``wait`` seconds), ``gone`` (not running;
stale files of that very process removed), ``reused`` (the pid runs another process),
``unproven`` (the state file is missing, or names another process or command line) or
``error``.

Nothing is signalled unless pid, start time (clock ticks, field 22 of /proc/PID/stat) and
command line all match both the recorded values and the helper's own state file.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sys
import time
from typing import Any

from .helper_start import _ID, StartError, _read_json, _remove, folder, proc_cmdline, proc_start

#: longest wait for the helper to end after SIGTERM that a request may ask for
MAX_WAIT = 30.0


def _number(value: object, low: float, high: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and low <= value <= high


def end_orphan(request: object, env: Any) -> dict[str, Any]:
    """End the helper ``request`` names if it provably is that helper; say what was done."""
    if not isinstance(request, dict):
        return {"result": "error", "detail": "the request is not a JSON object"}
    tunnel_id, pid = request.get("id"), request.get("pid")
    started, wait = request.get("started"), request.get("wait", 5.0)
    if not isinstance(tunnel_id, str) or not _ID.match(tunnel_id) \
            or not isinstance(pid, int) or not _number(pid, 1, 2**31) \
            or not isinstance(started, int) or not _number(started, 0, 2**63) \
            or not _number(wait, 0, MAX_WAIT):
        return {"result": "error", "detail": "the request names no valid helper"}
    path = folder(env)
    lock = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a start of the same id takes it
        return _end_locked(pid, started, os.path.join(path, tunnel_id + ".json"),
                           os.path.join(path, tunnel_id + ".sock"), float(wait))
    finally:
        os.close(lock)


def _end_locked(pid: int, started: int, state_path: str, sock_path: str, wait: float
                ) -> dict[str, Any]:
    state = _read_json(state_path)
    named = state is not None and state.get("pid") == pid and state.get("started") == started
    now = proc_start(pid)
    if now is None:
        if named:  # it died without removing its files (SIGKILL, a crash)
            _remove(sock_path)
            _remove(state_path)
            return {"result": "gone", "detail": "it had died; its files are removed"}
        return {"result": "gone", "detail": "it had ended"}
    if now != started:
        return {"result": "reused",
                "detail": f"started at tick {now}, the helper at {started}"}
    if state is None or not named:
        return {"result": "unproven",
                "detail": "its state file is missing or names another process"}
    cmdline = state.get("cmdline")
    if not isinstance(cmdline, list) or proc_cmdline(pid) != cmdline:
        return {"result": "unproven",
                "detail": f"the command line of pid {pid} is not the one its state file "
                          "recorded"}
    sent = ""
    for sig, name, grace in ((signal.SIGTERM, "SIGTERM", wait), (signal.SIGKILL, "SIGKILL", 2.0)):
        if not _signal(pid, started, cmdline, sig):
            break
        sent = name
        deadline = time.monotonic() + grace
        while proc_start(pid) == started and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc_start(pid) != started:
            break
    if proc_start(pid) == started:
        return {"result": "error" if sent else "unproven",
                "detail": f"pid {pid} outlived SIGTERM and SIGKILL" if sent else
                          f"pid {pid} changed its command line; not signalled"}
    if not sent:
        return {"result": "gone", "detail": "it ended just now"}
    state = _read_json(state_path)
    if state is not None and state.get("pid") == pid and state.get("started") == started:
        _remove(sock_path)  # a SIGKILL left them; SIGTERM has the helper remove them itself
        _remove(state_path)
    return {"result": "ended", "detail": f"ended by {sent}"}


def _signal(pid: int, started: int, cmdline: list[str], sig: int) -> bool:
    """Send ``sig`` to the proven process only.  With a pidfd (Python 3.9+, Linux 5.3+) it
    was opened before the last check, so a pid reused meanwhile cannot get it."""
    pidfd = None
    opener = getattr(os, "pidfd_open", None)
    if opener is not None:
        try:
            pidfd = opener(pid)
        except OSError:
            pidfd = None  # gone (the check below says so), or no pidfds here
    try:
        if proc_start(pid) != started or proc_cmdline(pid) != cmdline:
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)  # type: ignore[attr-defined,unused-ignore]
        else:
            os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)


def main_orphan() -> None:
    """The program's entry: the request from stdin, one JSON line out."""
    try:
        request = json.loads(sys.stdin.buffer.readline(64 * 1024))
    except ValueError:
        request = None
    try:
        answer = end_orphan(request, os.environ)
    except (StartError, OSError) as exc:
        answer = {"result": "error", "detail": str(exc)}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
