"""Copying bytes between a local socket and an SSH channel, with traffic counters."""

from __future__ import annotations

import contextlib
import ctypes
import selectors
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any, cast

import paramiko

from .counters import Counters
from .tuning import forget_old_channels

__all__ = ["Counters", "abort", "relay", "reset"]  # Counters: from .counters, re-exported for now

_CHUNK = 65536
#: seconds between checks whether a channel that sent its EOF has been closed since
_CLOSED_POLL = 1.0
#: what a channel's methods raise when the channel or its SSH connection is gone
_CHANNEL_ERRORS = (EOFError, OSError, paramiko.SSHException)
#: SO_LINGER on, 0 seconds: close() sends a RST instead of a FIN
_LINGER_RESET = struct.pack("ii", 1, 0)


def reset(sock: socket.socket) -> None:
    """Make the next ``close()`` of ``sock`` abort the connection (RST, not FIN)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)


def _libc_connect() -> Callable[[int, bytes, int], int] | None:
    """The C library's ``connect``, or None where there is none to call."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).connect
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return cast(Callable[[int, bytes, int], int], fn)


_CONNECT = _libc_connect()
_UNSPEC = struct.pack("=H14x", socket.AF_UNSPEC)  # a sockaddr of family AF_UNSPEC


def abort(sock: socket.socket) -> None:
    """Abort ``sock``'s connection now, while another thread may be blocked writing to it:
    the peer gets a RST and the blocked write fails.

    ``shutdown()`` would wake the writer too, but it sends a FIN first: a peer still
    reading what was queued would then see a clean end, and a cut download would look
    complete.  ``connect()`` to an AF_UNSPEC address disconnects a TCP socket with a
    reset on Linux; elsewhere (or if that fails) ``shutdown()`` still frees the writer.
    """
    reset(sock)
    with contextlib.suppress(OSError, ValueError):
        if _CONNECT is not None and _CONNECT(sock.fileno(), _UNSPEC, len(_UNSPEC)) == 0:
            return
        sock.shutdown(socket.SHUT_RDWR)


def relay(sock: socket.socket, chan: Any, counters: Counters, *, inbound: bool = True) -> None:
    """Copy both ways until both sides are done; EOF on one side is passed on as a half-close.

    If the channel ends without an EOF (the remote sent CLOSE alone, the SSH connection
    died, or the backend closed it) or its methods fail, the local socket is reset and
    closed at once: its peer sees the connection aborted, not a clean end (a truncated
    download must not look complete).  A channel closed after its EOF ends the relay too
    (nothing sent locally could go anywhere; OpenSSH closes the local socket then as
    well).  Errors of the local socket are raised; the caller closes both.

    ``inbound``: bytes read from the channel count as ``bytes_in`` (local forwards); for
    reverse forwards the channel carries what this machine sends out.
    """
    # what the local side sends goes out through a local forward, in through a reverse one
    sent, received = ("bytes_out", "bytes_in") if inbound else ("bytes_in", "bytes_out")
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "local")
    sel.register(chan, selectors.EVENT_READ, "remote")
    local_open = remote_open = True
    aborted = False
    try:
        while (local_open or remote_open) and not aborted:
            # after the remote's EOF its channel stays readable: poll for its close instead
            for key, _ in sel.select(None if remote_open else _CLOSED_POLL):
                if key.data == "local":
                    data = sock.recv(_CHUNK)
                    try:
                        if data:
                            chan.sendall(data)
                        else:
                            chan.shutdown_write()
                    except _CHANNEL_ERRORS:
                        aborted = True  # the channel or the SSH connection is gone
                        break
                    if data:
                        counters.add(sent, len(data))
                    else:
                        sel.unregister(sock)
                        local_open = False
                else:
                    try:
                        data = chan.recv(_CHUNK)  # also sends window adjustments
                    except _CHANNEL_ERRORS:
                        aborted = True
                        break
                    if data:
                        sock.sendall(data)
                        counters.add(received, len(data))
                    elif not chan.eof_received:
                        aborted = True  # closed without EOF: whatever was coming is lost
                        break
                    else:
                        sel.unregister(chan)
                        remote_open = False
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_WR)
            if not remote_open and chan.closed:
                break  # closed after its EOF
    finally:
        sel.close()
        if aborted:
            reset(sock)
            sock.close()
        forget_old_channels(chan.get_transport())
