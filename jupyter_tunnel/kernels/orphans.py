"""Ending the remote kernel of a tunnel whose owner died (what ``cleanup`` calls).

The kernel tunnel's record names its kernel (``record["kernel"]``: id, pid, start time,
the hops and the ssh config).  :func:`end_kernel` connects to that chain again
(``resume.orphans.reconnected``: no prompt, short timeouts; the OpenSSH backend reuses a
live master of the same hops) and asks the nanny program to stop kernel ``id`` only if its
own state file names that pid and start time; the nanny ends the kernel's process group
and removes its files.
"""

from __future__ import annotations

import re
from typing import Any

from ..errors import TunnelError
from ..resume.orphans import HelperOutcome, hops_of, reconnected
from .remote import RemoteKernels

__all__ = ["end_kernel"]

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def end_kernel(kernel: dict[str, Any], *, backend: str = "auto",
               connect_timeout: float = 5.0) -> HelperOutcome:
    """End the orphaned remote kernel ``kernel`` (a record's ``kernel``) if it provably is
    that kernel; never raises for what the remote or the network does."""
    pid, started, rid = _int(kernel.get("pid")), _int(kernel.get("started")), kernel.get("id")
    hops, config = hops_of(kernel.get("hops")), kernel.get("ssh_config")
    host = hops[-1].host if hops else str(kernel.get("host") or "?")
    if not isinstance(rid, str) or not _ID.match(rid) or pid is None or pid <= 0 \
            or started is None or hops is None \
            or (config is not None and not isinstance(config, str)):
        return HelperOutcome("error", host, pid,
                             f"the record of its remote kernel on {host} is incomplete, so it "
                             "cannot be proven; left alone (it ends by itself once its owner "
                             "has been away for orphan_after)")
    try:
        with reconnected(hops, config, backend, connect_timeout) as chosen:
            answer = RemoteKernels(chosen.run, host, pid, any_python=True).stop(
                rid, pid=pid, started=started)
    except TunnelError as exc:
        return _unreachable(host, pid, exc.message)
    except OSError as exc:
        return _unreachable(host, pid, exc.strerror or str(exc))
    result, detail = answer.get("result"), str(answer.get("detail") or "")
    if result == "ended":
        return HelperOutcome("ended", host, pid, f"ended the remote kernel on {host} (pid {pid})")
    if result == "gone":
        return HelperOutcome("gone", host, pid,
                             f"its remote kernel on {host} (pid {pid}) had already ended")
    return HelperOutcome("unproven", host, pid,
                         f"pid {pid} on {host} is not provably its remote kernel: {detail}; "
                         "not signalled")


def _unreachable(host: str, pid: int, reason: str) -> HelperOutcome:
    return HelperOutcome("unreachable", host, pid,
                         f"could not reach {host} to end its remote kernel (pid {pid}; it ends "
                         f"by itself once its owner has been away for orphan_after): {reason}")
