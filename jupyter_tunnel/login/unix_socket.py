"""The private Unix sockets of logins that ask (the askpass server, the answer door): bound
0600 in a 0700 folder of the user, each peer's uid checked by the caller."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

_UCRED = struct.Struct("3i")  # pid, uid, gid
#: how often a serving thread looks at its stop flag, in seconds
POLL = 0.2


def listen_private(path: Path, backlog: int) -> socket.socket:
    """A listening socket at ``path`` (a file left there before is replaced), mode 0600.

    It is made under a temporary name and renamed into place once it listens, mode set:
    whoever finds ``path`` can connect (no window with the umask's mode, or refused)."""
    tmp = path.with_name(f".{path.name}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()  # left by a process killed while it made one
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(tmp))
        os.chmod(tmp, 0o600)  # the folder is 0700: no one else could reach it meanwhile
        sock.listen(backlog)
        sock.settimeout(POLL)
        os.replace(tmp, path)  # a file left at path by a killed process goes too
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return sock


def connections(sock: socket.socket, stopped: Callable[[], bool]) -> Iterator[socket.socket]:
    """Accepted connections until ``stopped()`` or the socket is closed."""
    while not stopped():
        try:
            conn, _ = sock.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        yield conn


def peer(conn: socket.socket) -> tuple[int, int]:
    """The (pid, uid) of the process at the other end of ``conn``."""
    pid, uid, _ = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                _UCRED.size))
    return pid, uid


def read_line(conn: socket.socket, limit: int) -> bytes:
    """The first line a peer sent (without its newline), reading at most about ``limit``
    bytes."""
    data = bytearray()
    while b"\n" not in data and len(data) < limit:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return bytes(data).split(b"\n", 1)[0]
