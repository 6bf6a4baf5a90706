"""Copying bytes between a local socket and an SSH channel, with traffic counters."""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
from typing import Any

import paramiko

from .counters import Counters
from .tuning import forget_old_channels

__all__ = ["Counters", "relay", "reset"]  # Counters: from .counters, re-exported for now

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
