"""Ending the resume helper of a tunnel whose process died (what ``cleanup`` calls).

The tunnel's record names its helper (``record["resume"]["helper"]``: id, pid, start time,
socket, the hops and the ssh config).  :func:`end_helper` connects to that chain again
(the OpenSSH backend uses a live master of the same hops without a new login; BatchMode,
short timeouts), runs the same fixed Python search as the start (``sh -s PID``: the
helper's own Python if that pid is ours and a python, else python3), then the fixed
loader command with a program of ours on stdin (``frames``, ``helper_start`` and
``orphan_remote``) and one JSON line naming the helper.  No input reaches a command
line but a pid checked as an integer.  On the remote the program signals the process only
if pid, start time and command line match the record and the helper's own state file.
The secret is never needed (nor stored): the helper ends on SIGTERM as on a shutdown.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from ..backends import Backend, make_backend
from ..errors import TunnelError
from ..spec import Hop
from ..sshconfig import SSHConfig, resolve_chain
from . import launch, remote

__all__ = ["HelperOutcome", "end_helper", "hops_of", "program", "reconnected",
           "request_input"]

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
#: joined in this order, as ``remote.program`` joins the helper's
_MODULES = ("resume/frames.py", "resume/helper_start.py", "resume/orphan_remote.py")


@dataclass(frozen=True)
class HelperOutcome:
    """What became of a helper: ``result`` is ``ended``, ``gone``, ``reused``,
    ``unproven``, ``unreachable`` or ``error``; ``message`` says it for people."""

    result: str
    host: str
    pid: int | None
    message: str

    @property
    def ended(self) -> bool:
        """Whether this call ended it."""
        return self.result == "ended"


@cache
def program() -> str:
    """The remote program's full source (Python 3.8+, stdlib only)."""
    return remote.join_modules(_MODULES, "main_orphan()")


def request_input(tunnel_id: str, pid: int, started: int, wait: float) -> bytes:
    """What the program's stdin receives: the loader line, the program, the request."""
    if not _ID.match(tunnel_id):
        raise ValueError(f"not a helper id: {tunnel_id!r}")
    line = json.dumps({"id": tunnel_id, "pid": pid, "started": started, "wait": wait})
    return remote.stdin_for(program(), "jupyter-tunnel-orphan", line)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def hops_of(raw: object) -> list[Hop] | None:
    """The hops of a record (`[{host, user, port}]`, first hop first); None if malformed."""
    if not isinstance(raw, list) or not raw:
        return None
    hops = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("host"), str):
            return None
        user, port = item.get("user"), _int(item.get("port"))
        if (user is not None and not isinstance(user, str)) or \
                (item.get("port") is not None and port is None):
            return None
        hops.append(Hop(item["host"], user, port))
    return hops


@contextlib.contextmanager
def reconnected(hops: list[Hop], config: str | None, backend: str, timeout: float
                ) -> Iterator[Backend]:
    """A backend connected again to a dead tunnel's hops (never prompting), closed after;
    TunnelError or OSError when they cannot be reached."""
    chain = resolve_chain(hops[-1], tuple(hops[:-1]),
                          SSHConfig(config) if config else SSHConfig())
    chosen = make_backend(backend)
    try:
        chosen.connect(chain, None, timeout, None)
        yield chosen
    finally:
        with contextlib.suppress(TunnelError, OSError):
            chosen.close()


def end_helper(helper: dict[str, Any], *, backend: str = "auto", connect_timeout: float = 5.0,
               wait: float = 5.0) -> HelperOutcome:
    """End the orphaned helper ``helper`` (a record's ``resume.helper``) on its host, if it
    provably is that helper; never raises for what the remote or the network does."""
    host = helper.get("host") if isinstance(helper.get("host"), str) else "?"
    pid, started = _int(helper.get("pid")), _int(helper.get("started"))
    tunnel_id, hops = helper.get("id"), hops_of(helper.get("hops"))
    config = helper.get("ssh_config")
    if not isinstance(tunnel_id, str) or not _ID.match(tunnel_id) or pid is None \
            or pid <= 0 or started is None or hops is None \
            or (config is not None and not isinstance(config, str)):
        return HelperOutcome("error", str(host), pid,
                             f"the record of its resume helper on {host} is incomplete, so "
                             "it cannot be proven; left alone (it ends by itself after its "
                             "outage limit)")
    host = hops[-1].host
    outage = helper.get("outage")
    by_itself = f"it ends by itself within {math.ceil(outage / 60)} min" \
        if isinstance(outage, (int, float)) and not isinstance(outage, bool) and outage > 0 \
        else "it ends by itself after its outage limit, 15 min by default"

    def unreachable(reason: str) -> HelperOutcome:
        return HelperOutcome("unreachable", host, pid,
                             f"could not reach {host} to end its resume helper (pid {pid}; "
                             f"{by_itself}): {reason}")

    try:
        with reconnected(hops, config, backend, connect_timeout) as chosen:
            python = launch.find_python(chosen.run, host, pid, timeout=connect_timeout + 10)
            stdin = request_input(tunnel_id, pid, started, wait).decode("utf-8")
            status, out, err = chosen.run(remote.command(python),
                                          wait + connect_timeout + 10, stdin)
    except launch.ResumeUnavailable as exc:  # no Python there: then no helper runs either
        return HelperOutcome("error", host, pid, f"could not end the resume helper on {host} "
                                                 f"(pid {pid}): {exc}")
    except TunnelError as exc:
        return unreachable(exc.message)
    except OSError as exc:
        return unreachable(exc.strerror or str(exc))
    return _outcome(host, pid, status, out, err)


def _outcome(host: str, pid: int, status: int, out: str, err: str) -> HelperOutcome:
    lines = [line for line in out.splitlines() if line.strip()]
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or not isinstance(answer.get("result"), str):
        last = next((ln.strip() for ln in reversed(err.splitlines()) if ln.strip()),
                    f"exit status {status}")
        return HelperOutcome("error", host, pid, f"could not end the resume helper on {host} "
                                                 f"(pid {pid}): no answer ({last})")
    result, detail = answer["result"], str(answer.get("detail") or "")
    if result == "ended":
        message = f"ended the resume helper on {host} (pid {pid})"
    elif result == "gone":
        message = f"its resume helper on {host} (pid {pid}) had already ended"
    elif result == "reused":
        message = (f"pid {pid} on {host} now belongs to another process, not its resume "
                   f"helper ({detail}); not signalled")
    elif result == "unproven":
        message = f"pid {pid} on {host} is not provably its resume helper: {detail}; not signalled"
    else:
        result = "error"
        message = f"could not end the resume helper on {host} (pid {pid}): {detail}"
    return HelperOutcome(result, host, pid, message)
