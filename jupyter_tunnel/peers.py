"""Only the tunnel's own user may use its local ports.

On a machine shared by several people (a JupyterHub, a login node) every local user can
connect to 127.0.0.1:PORT.  A tunnel's port leads into a remote Jupyter (guarded by its
token) and a remote kernel's five ports lead into the kernel (its iopub port is readable
by anyone who connects, the key only signs messages), so each listener checks who connects:
Linux lists the owner (uid) of every TCP socket in ``/proc/net/tcp`` and ``tcp6``, and a
loopback connection's other end is one of them.  A connection from another user's process
is closed before anything is forwarded; root's are let in (root can read the token anyway).

A connection from outside the machine (a forward bound to another address on purpose, as
with ``ssh -L 0.0.0.0:…``) is not checked: whoever reaches that address may use it.  Where
``/proc/net/tcp`` cannot be read (not Linux) nothing is checked.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
from pathlib import Path

__all__ = ["may_use", "peer_uid", "proc_address"]

log = logging.getLogger(__name__)

TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))


def proc_address(host: str, port: int) -> str:
    """``host:port`` as ``/proc/net/tcp{,6}`` writes it: the address in 32-bit words of
    host byte order, in hex, and the port in hex (``0100007F:1F90`` on x86)."""
    packed = ipaddress.ip_address(host.split("%", 1)[0]).packed
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def peer_uid(sock: socket.socket) -> int | None:
    """The uid owning the other end of a connection made on this machine, or None when no
    table lists it (it has gone, or the tables cannot be read)."""
    try:
        peer = sock.getpeername()[:2]
        mine = sock.getsockname()[:2]
    except OSError:
        return None
    theirs, ours = proc_address(*peer), proc_address(*mine)
    for table in TABLES:
        try:
            text = table.read_text()
        except OSError:
            continue
        at = text.find(f" {theirs} {ours} ")
        if at >= 0:
            fields = text[at:text.find("\n", at)].split()
            try:
                return int(fields[6])  # local, remote, state, queues, timer, retransmits, uid
            except (IndexError, ValueError):
                return None
    return None


def _tables_readable() -> bool:
    return any(os.access(table, os.R_OK) for table in TABLES)


def may_use(sock: socket.socket) -> bool:
    """Whether the process at the other end of an accepted connection may use it: any
    connection from outside this machine, one of this user's or root's processes; logs a
    refusal."""
    try:
        host = sock.getpeername()[0]
    except OSError:
        return False
    address = ipaddress.ip_address(host.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if not address.is_loopback:
        return True
    uid = peer_uid(sock)
    if uid is None:
        return not _tables_readable()  # gone already: nothing to forward to
    if uid in (os.geteuid(), 0):
        return True
    port = sock.getsockname()[1]
    log.warning("refused a connection to local port %d from a process of another user (uid "
                "%d): a tunnel serves only the user who opened it", port, uid)
    return False
