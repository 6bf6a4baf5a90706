"""Copying bytes between a local socket and an SSH channel, with traffic counters."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from typing import Any

_CHUNK = 65536


class Counters:
    """Traffic counters shared by the relay threads of one backend."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes_in = 0
        self.bytes_out = 0
        self.connections = 0
        self.connections_total = 0

    def opened(self) -> None:
        """Count a connection that starts relaying."""
        with self.lock:
            self.connections += 1
            self.connections_total += 1

    def ended(self) -> None:
        """Count a connection that stopped relaying."""
        with self.lock:
            self.connections -= 1

    def add(self, counter: str, n: int) -> None:
        """Add ``n`` bytes to ``bytes_in`` or ``bytes_out``."""
        with self.lock:
            setattr(self, counter, getattr(self, counter) + n)

    def snapshot(self) -> dict[str, int]:
        """The counters now."""
        with self.lock:
            return {
                "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out,
                "connections": self.connections,
                "connections_total": self.connections_total,
            }


def relay(sock: socket.socket, chan: Any, counters: Counters, *, inbound: bool = True) -> None:
    """Copy both ways until both sides are done; EOF on one side is passed on as a half-close.

    ``inbound``: bytes read from the channel count as ``bytes_in`` (local forwards); for
    reverse forwards the channel carries what this machine sends out.
    """
    # what the local side sends goes out through a local forward, in through a reverse one
    sent, received = ("bytes_out", "bytes_in") if inbound else ("bytes_in", "bytes_out")
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ, "local")
    sel.register(chan, selectors.EVENT_READ, "remote")
    open_sides = 2
    try:
        while open_sides:
            for key, _ in sel.select():
                if key.data == "local":
                    data = sock.recv(_CHUNK)
                    if data:
                        chan.sendall(data)
                        counters.add(sent, len(data))
                    else:
                        sel.unregister(sock)
                        open_sides -= 1
                        chan.shutdown_write()
                else:
                    data = chan.recv(_CHUNK)
                    if data:
                        sock.sendall(data)
                        counters.add(received, len(data))
                    else:
                        sel.unregister(chan)
                        open_sides -= 1
                        with contextlib.suppress(OSError):
                            sock.shutdown(socket.SHUT_WR)
    finally:
        sel.close()
