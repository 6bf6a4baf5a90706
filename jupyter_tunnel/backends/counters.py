"""Traffic counters shared by a backend's relay threads (no SSH library needed)."""

from __future__ import annotations

import threading


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
