"""Only the tunnel's own user may use its local ports.

On a machine shared by several people (a JupyterHub, a login node) every local user can
connect to 127.0.0.1:PORT.  A tunnel's port leads into a remote Jupyter (guarded by its
token) and a remote kernel's five ports lead into the kernel (its iopub port is readable
by anyone who connects, the key only signs messages), so each listener checks who connects.
Every listener is on 127.0.0.1, so the other end of each accepted connection is a socket of
this machine: Linux tells its owner (uid) by the exact address pair, through the
``sock_diag`` netlink interface (what ``ss`` uses), or else in ``/proc/net/tcp`` and
``tcp6``.  A connection from another user's process is closed before anything is
forwarded; root's are let in (root can read the token anyway).  A connection whose other
end is gone already, or is only a closed socket's leftover (TIME_WAIT: no owner), is closed
too.  Where neither source can be read (not Linux) nothing is checked.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import struct
from pathlib import Path

__all__ = ["may_use", "peer_uid", "proc_address"]

log = logging.getLogger(__name__)

TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLM_F_REQUEST = 1
ALL_STATES = 0xFFFFFFFF
NO_COOKIE = 0xFFFFFFFF

Address = tuple[str, int]


def proc_address(host: str, port: int) -> str:
    """``host:port`` as ``/proc/net/tcp{,6}`` writes it: the address in 32-bit words of
    host byte order, in hex, and the port in hex (``0100007F:1F90`` on x86)."""
    packed = ipaddress.ip_address(host.split("%", 1)[0]).packed
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def _forms(theirs: Address, ours: Address) -> list[tuple[int, Address, Address]]:
    """The ways the other end's socket may be known: as IPv4, and for an IPv4 pair also as
    an IPv6 socket talking IPv4 (``::ffff:127.0.0.1``, as Java clients do)."""
    peer = ipaddress.ip_address(theirs[0].split("%", 1)[0])
    if isinstance(peer, ipaddress.IPv4Address):
        mapped = (f"::ffff:{theirs[0]}", theirs[1]), (f"::ffff:{ours[0]}", ours[1])
        return [(socket.AF_INET, theirs, ours), (socket.AF_INET6, *mapped)]
    return [(socket.AF_INET6, theirs, ours)]


def _diag(family: int, theirs: Address, ours: Address) -> tuple[int, int] | None:
    """(uid, inode) of the TCP socket at ``theirs`` connected to ``ours``, asked of the
    kernel by exact address pair; None when it has no such socket.  Raises OSError when
    the interface cannot be used."""
    def addr(host: str) -> bytes:
        return ipaddress.ip_address(host.split("%", 1)[0]).packed.ljust(16, b"\0")

    sockid = struct.pack(">HH", theirs[1], ours[1]) + addr(theirs[0]) + addr(ours[0]) + \
        struct.pack("=III", 0, NO_COOKIE, NO_COOKIE)
    request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, ALL_STATES) + sockid
    header = struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as link:
        link.settimeout(2.0)
        link.send(header + request)
        answer = link.recv(8192)
    kind = struct.unpack_from("=H", answer, 4)[0]
    if kind == NLMSG_ERROR:
        code = -struct.unpack_from("=i", answer, 16)[0]
        if code == errno.ENOENT:
            return None
        raise OSError(code, os.strerror(code))
    if kind != SOCK_DIAG_BY_FAMILY or len(answer) < 88:
        raise OSError(errno.EPROTO, "unexpected sock_diag answer")
    # inet_diag_msg after the 16-byte header: family, state, timer, retrans (4 bytes), the
    # 48-byte socket id, then expires, rqueue, wqueue, uid, inode
    uid, inode = struct.unpack_from("=II", answer, 16 + 4 + 48 + 12)
    return uid, inode


def _scan(family: int, theirs: Address, ours: Address) -> tuple[int, int] | None:
    """:func:`_diag` from ``/proc/net/tcp{,6}`` (one read of the whole table)."""
    table = TABLES[family == socket.AF_INET6]
    text = table.read_text()
    at = text.find(f" {proc_address(*theirs)} {proc_address(*ours)} ")
    if at < 0:
        return None
    # local, remote, state, queues, timer, retransmits, uid, timeout, inode
    fields = text[at:text.find("\n", at)].split()
    try:
        return int(fields[6]), int(fields[8])
    except (IndexError, ValueError):
        return None


_lookups = [_diag, _scan]


def peer_uid(sock: socket.socket) -> int | None:
    """The uid owning the other end of a connection made on this machine, or None when it
    is gone (or no longer owned: a TIME_WAIT leftover) or cannot be told."""
    try:
        theirs, ours = sock.getpeername()[:2], sock.getsockname()[:2]
    except OSError:
        return None
    for lookup in list(_lookups):
        try:
            for family, peer, mine in _forms(theirs, ours):
                found = lookup(family, peer, mine)
                if found is not None:
                    uid, inode = found
                    return uid if inode else None  # inode 0: nobody holds it any more
            return None
        except (OSError, AttributeError) as exc:  # no such way here (AF_NETLINK: Linux)
            log.debug("peer lookup with %s failed: %s", lookup.__name__, exc)
            if lookup in _lookups and len(_lookups) > 1:
                _lookups.remove(lookup)
    return None


def _can_tell() -> bool:
    """Whether this system can tell who is at the other end at all."""
    return _diag in _lookups or any(os.access(table, os.R_OK) for table in TABLES)


def may_use(sock: socket.socket) -> bool:
    """Whether the process at the other end of an accepted connection may use it: one of
    this user's or root's; logs a refusal."""
    uid = peer_uid(sock)
    if uid in (os.geteuid(), 0):
        return True
    try:
        port = sock.getsockname()[1]
    except OSError:
        return False
    if uid is None:
        if not _can_tell():
            return True  # no way to tell here (not Linux): as before this check
        log.info("refused a connection to local port %d whose other end is gone", port)
        return False
    log.warning("refused a connection to local port %d from a process of another user (uid "
                "%d): a tunnel serves only the user who opened it", port, uid)
    return False
