"""Facts about local processes: start time and command line, to prove ownership.

A pid alone proves nothing (pids are reused); pid plus start time does.
"""

from __future__ import annotations

import os
from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    """Fields 3 and on of /proc/PID/stat (state first), or None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    # the command name (field 2) may contain spaces and parentheses: split after the last ')'
    return stat[stat.rfind(")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone."""
    fields = _stat(pid)
    try:
        return int(fields[19]) if fields else None
    except (IndexError, ValueError):
        return None


def cmdline(pid: int) -> list[str] | None:
    """The process's argv, or None if it is gone or hidden."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def is_alive(pid: int, started: int | None) -> bool:
    """True when ``pid`` runs and is the same process that started at ``started``."""
    if pid <= 0:
        return False
    if not Path("/proc/self/stat").exists():  # no procfs: fall back to a signal probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    fields = _stat(pid)
    if not fields or fields[0] in ("Z", "X"):  # an exited process not yet reaped is gone
        return False
    now = start_time(pid)
    return now is not None and (started is None or now == started)


def is_same(pid: int, started: int | None, argv: list[str] | None) -> bool:
    """True only when ``pid`` is the very process recorded: same start time and command line."""
    return started is not None and is_alive(pid, started) and argv is not None \
        and cmdline(pid) == list(argv)


def identity(pid: int) -> dict[str, object] | None:
    """``{pid, started, cmdline}`` of a running process (what cleanup needs to prove it)."""
    started, argv = start_time(pid), cmdline(pid)
    if started is None or argv is None:
        return None
    return {"pid": pid, "started": started, "cmdline": argv}


def self_identity() -> tuple[int, int | None]:
    """This process's pid and start time."""
    pid = os.getpid()
    return pid, start_time(pid)
