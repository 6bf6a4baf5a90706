"""Finding and removing what crashed tunnels left behind.

A record is orphaned when its owner process is gone (pid plus start time no longer
match).  Its record is removed; processes it recorded as started by it (``children``)
are ended, but only when pid, start time and command line all still match, so a
process that merely reuses a pid is never signalled.  A port it held that something
else now listens on is reported with that holder, never touched.  A resume helper it
started on its target is ended there, proven the same way (see :mod:`.resume.orphans`);
a target that cannot be reached is reported, the helper then ends by itself.  So is a
remote kernel the tunnel carried (see :mod:`.kernels.orphans`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import ports, procinfo
from .login.door import sweep_doors
from .registry import Registry

if TYPE_CHECKING:  # imported when used: cleanup runs at every open
    from .resume.orphans import HelperOutcome


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


def _end_all(name: str, children: list[tuple[int, int, list[str]]], timeout: float,
             ended: list[dict[str, Any]], left: list[dict[str, Any]],
             gone_meanwhile: frozenset[int] = frozenset()) -> None:
    """End the recorded processes (pid, start time, argv) of the tunnel ``name``; those in
    ``gone_meanwhile`` that are gone now were ended by this cleanup already (the ssh master
    that the connection to end the resume helper used, and ended when it closed)."""
    for pid, started, argv in children:
        command = " ".join(argv)
        if _end(pid, started, argv, timeout) or (
                pid in gone_meanwhile and not procinfo.is_alive(pid, started)):
            ended.append({"tunnel": name, "pid": pid, "command": command})
        elif procinfo.is_alive(pid, None):
            left.append({"tunnel": name, "pid": pid, "command": command,
                         "why": f"pid {pid} now belongs to another process; not signalled"})


def _end_unless_used(users: Path, owner: object, end: Callable[[], None]) -> str:
    """Call ``end()`` unless the OpenSSH master whose users folder is ``users`` is used by
    live tunnels of other processes than ``owner``; under its lock, as every tunnel that
    attaches to it holds.  Returns why it was left alone ("" if it was not)."""
    from .backends.openssh_files import control_dir
    from .backends.openssh_master import end_unless_used
    from .errors import TunnelError

    if users.parent != control_dir(create=False) or not users.name.endswith(".users"):
        return (f"its ssh connection's files ({users}) are not in this runtime dir's "
                "control folder; left alone")
    try:
        users_left = end_unless_used(users, owner if isinstance(owner, int) else None, end)
    except TunnelError:
        return ("a login to the same hosts holds its ssh connection's lock; run cleanup "
                "again later")
    if not users_left:
        return ""
    return (f"its ssh connection is shared with the tunnels of process(es) "
            f"{', '.join(map(str, users_left))}; it ends when the last of them closes")


def _sweep_masters() -> None:
    """Remove the files of OpenSSH masters that ended after their tunnels were killed."""
    from .backends.openssh_files import control_dir
    from .backends.openssh_master import sweep

    with contextlib.suppress(OSError):
        sweep(control_dir(create=False))


def _helper_of(record: dict[str, Any]) -> dict[str, Any] | None:
    """The record's resume helper (``resume.helper``), if it names one."""
    resume = record.get("resume")
    helper = resume.get("helper") if isinstance(resume, dict) else None
    return helper if isinstance(helper, dict) else None


def _end_helper(name: str, record: dict[str, Any], backend: str,
                ended: list[dict[str, Any]], left: list[dict[str, Any]]) -> str:
    """End the record's resume helper on its target, if it has one; return a note for the
    record's removal ("" if none)."""
    helper = _helper_of(record)
    if helper is None:
        return ""
    from .resume.orphans import end_helper

    return _report(name, end_helper(helper, backend=backend), "the resume helper", ended,
                   left)


def _end_kernel(name: str, record: dict[str, Any], backend: str,
                ended: list[dict[str, Any]], left: list[dict[str, Any]]) -> str:
    """End the record's remote kernel on its target, if it carried one; return a note for
    the record's removal ("" if none)."""
    kernel = record.get("kernel")
    if not isinstance(kernel, dict):
        return ""
    from .kernels.orphans import end_kernel

    return _report(name, end_kernel(kernel, backend=backend), "the remote kernel", ended,
                   left)


def _report(name: str, outcome: HelperOutcome, what: str, ended: list[dict[str, Any]],
            left: list[dict[str, Any]]) -> str:
    """File what became of a process on the target under ended or left; "" or, for one
    already gone, a note for the record's removal."""
    if outcome.ended:
        ended.append({"tunnel": name, "pid": outcome.pid, "host": outcome.host,
                      "command": f"{what} on {outcome.host}", "what": outcome.message})
    elif outcome.result == "gone":
        return outcome.message
    else:
        left.append({"tunnel": name, "pid": outcome.pid, "host": outcome.host,
                     "why": outcome.message})
    return ""


def _record_ports(record: dict[str, Any]) -> list[int]:
    found = [record.get("local_port")]
    found += [f.get("local_port") for f in record.get("forwards") or [] if isinstance(f, dict)]
    return [p for p in found if isinstance(p, int) and p > 0]


def cleanup(registry: Registry, *, only: str | None = None, timeout: float = 3.0,
            backend: str = "auto") -> dict[str, list[dict[str, Any]]]:
    """Remove orphaned records and end the processes they started; report what was done.

    With ``only``, just the record of that name.  Returns ``{"removed": [...], "ended":
    [...], "left": [...]}``: the records removed (name,
    pid, owner, why), the processes ended (pid, command, tunnel; for a resume helper also
    host and ``what``), and what was left alone (a port now held by another process, a
    recorded process whose pid was reused, a resume helper not reached or not proven).
    ``backend`` carries the connection to a resume helper's (or remote kernel's) target.
    """
    removed: list[dict[str, Any]] = []
    ended: list[dict[str, Any]] = []
    left: list[dict[str, Any]] = []
    for record in registry.all():
        if not record.get("orphaned") or only not in (None, record["name"]):
            continue
        name = record["name"]
        groups: dict[str | None, list[tuple[int, int, list[str]]]] = {}
        for child in record.get("children") or []:
            try:
                pid, started = int(child["pid"]), int(child["started"])
                argv = [str(a) for a in child["cmdline"]]
            except (KeyError, TypeError, ValueError):
                continue
            shared = child.get("shared")
            groups.setdefault(shared if isinstance(shared, str) else None, []).append(
                (pid, started, argv))
        live = frozenset(pid for group in groups.values() for pid, started, argv in group
                         if procinfo.is_same(pid, started, argv)) \
            if _helper_of(record) is not None or record.get("kernel") else frozenset()
        # first, while its ssh master (if any) may still be up to carry the connection
        notes = [_end_kernel(name, record, backend, ended, left),
                 _end_helper(name, record, backend, ended, left)]
        note = "; ".join(n for n in notes if n)
        for shared, group in groups.items():
            end = functools.partial(_end_all, name, group, timeout, ended, left, live)
            if shared is None:
                end()
                continue
            why = _end_unless_used(Path(shared), record.get("pid"), end)
            left += [{"tunnel": name, "pid": pid, "command": " ".join(argv), "why": why}
                     for pid, _, argv in group if why]
        if registry.remove_orphan(name):
            why = f"its {record.get('owner')} process (pid {record.get('pid')}) is gone"
            if record.get("state") == "failed":
                why += f"; it had failed: {(record.get('error') or {}).get('error')}"
            if note:
                why += f"; {note}"
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
        _sweep_masters()
        sweep_doors(registry.path)  # of processes killed while a question waited
    return {"removed": removed, "ended": ended, "left": left}
