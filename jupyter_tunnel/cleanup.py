"""Finding and removing what crashed tunnels left behind.

A record is orphaned when its owner process is gone (pid plus start time no longer
match).  Its record is removed; processes it recorded as started by it (``children``)
are ended, but only when pid, start time and command line all still match, so a
process that merely reuses a pid is never signalled.  A port it held that something
else now listens on is reported with that holder, never touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Any

from . import ports, procinfo
from .registry import Registry


def _end(pid: int, started: int, argv: list[str], timeout: float) -> bool:
    """SIGTERM, then SIGKILL, the recorded process; False if it was not (or no longer) it."""
    if not procinfo.is_same(pid, started, argv):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and procinfo.is_alive(pid, started):
        time.sleep(0.05)
    if procinfo.is_same(pid, started, argv):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return True


def _shared_with(child: dict[str, Any], record: dict[str, Any]) -> list[int]:
    """The live processes, other than the record's owner, whose tunnels use the process
    ``child`` (an OpenSSH master shared through its users folder)."""
    folder = child.get("shared")
    if not isinstance(folder, str):
        return []
    from pathlib import Path

    from .backends.openssh_master import live_users

    owner = record.get("pid") if isinstance(record.get("pid"), int) else None
    return sorted(set(live_users(Path(folder), but_pid=owner).values()))


def _record_ports(record: dict[str, Any]) -> list[int]:
    found = [record.get("local_port")]
    found += [f.get("local_port") for f in record.get("forwards") or [] if isinstance(f, dict)]
    return [p for p in found if isinstance(p, int) and p > 0]


def cleanup(registry: Registry, *, only: str | None = None, timeout: float = 3.0
            ) -> dict[str, list[dict[str, Any]]]:
    """Remove orphaned records and end the processes they started; report what was done.

    With ``only``, just the record of that name.  Returns ``{"removed": [...], "ended":
    [...], "left": [...]}``: the records removed (name,
    pid, owner, why), the processes ended (pid, command, tunnel), and what was left alone
    (a port now held by another process, a recorded process whose pid was reused).
    """
    removed: list[dict[str, Any]] = []
    ended: list[dict[str, Any]] = []
    left: list[dict[str, Any]] = []
    for record in registry.all():
        if not record.get("orphaned") or only not in (None, record["name"]):
            continue
        name = record["name"]
        for child in record.get("children") or []:
            try:
                pid, started = int(child["pid"]), int(child["started"])
                argv = [str(a) for a in child["cmdline"]]
            except (KeyError, TypeError, ValueError):
                continue
            command = " ".join(argv)
            users = _shared_with(child, record)
            if users:
                left.append({"tunnel": name, "pid": pid, "command": command,
                             "why": f"its ssh connection is shared with the tunnels of "
                                    f"process(es) {', '.join(map(str, users))}; it ends when "
                                    "the last of them closes"})
                continue
            if _end(pid, started, argv, timeout):
                ended.append({"tunnel": name, "pid": pid, "command": command})
            elif procinfo.is_alive(pid, None):
                left.append({"tunnel": name, "pid": pid, "command": command,
                             "why": f"pid {pid} now belongs to another process; not signalled"})
        if registry.remove_orphan(name):
            why = f"its {record.get('owner')} process (pid {record.get('pid')}) is gone"
            if record.get("state") == "failed":
                why += f"; it had failed: {(record.get('error') or {}).get('error')}"
            removed.append({"name": name, "pid": record.get("pid"), "owner": record.get("owner"),
                            "why": why})
        for port in _record_ports(record):
            for holder in ports.holders(port):
                left.append({"tunnel": name, "port": port, "pid": holder.pid,
                             "command": " ".join(holder.cmdline),
                             "why": f"local port {port} is now held by {holder.describe()}, "
                                    "which jupyter_tunnel did not start; left alone"})
    if only is None:
        removed += [{"name": n, "pid": None, "owner": None, "why": why}
                    for n, why in registry.remove_debris()]
    return {"removed": removed, "ended": ended, "left": left}
