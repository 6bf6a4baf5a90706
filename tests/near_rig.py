"""The rig of tests/test_resume_near.py: a cuttable link to the helper, local clients.

``Proxy.connect`` is the engine's ``connect_link``: a socketpair end whose other end is
relayed (two threads) to a fresh connection to the helper's Unix socket.  ``cut`` severs
every link at once (both sides see the end) and refuses new ones for a while: that is
the outage.  ``stall`` freezes the links that exist without closing them (a half-dead
SSH session), new ones work.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable

from jupyter_tunnel.resume.near import NearEnd


class Pair:
    """One relayed link: ``near`` (ours, the socketpair's far end) and ``far`` (helper)."""

    def __init__(self, near: socket.socket, far: socket.socket) -> None:
        self.near, self.far = near, far
        self.dead = False
        self.stalled = False
        self._left = 2
        self._lock = threading.Lock()

    def pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                while self.stalled and not self.dead:  # not even an EOF goes through
                    time.sleep(0.02)
                if self.dead or not data:
                    break
                dst.sendall(data)
            if not self.dead:
                dst.shutdown(socket.SHUT_WR)
        except OSError:  # one side failed (the helper died): both sides see the end
            self.kill()
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self.dead = True
            self.near.close()
            self.far.close()

    def kill(self) -> None:
        self.dead = True
        for sock in (self.near, self.far):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Proxy:
    """``connect`` is a NearEnd's connect_link to the helper at ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.pairs: list[Pair] = []
        self.threads: list[threading.Thread] = []
        self.refuse_until = 0.0
        self.connects = 0
        self.refused = 0

    def connect(self) -> socket.socket:
        with self.lock:
            if time.monotonic() < self.refuse_until:
                self.refused += 1
                raise ConnectionRefusedError("the link is down (test outage)")
        far = socket.socket(socket.AF_UNIX)
        try:
            far.settimeout(10)
            far.connect(self.path)
            far.settimeout(None)
        except OSError:
            far.close()
            raise
        mine, theirs = socket.socketpair()
        pair = Pair(theirs, far)
        threads = [threading.Thread(target=pair.pump, args=(theirs, far), daemon=True),
                   threading.Thread(target=pair.pump, args=(far, theirs), daemon=True)]
        with self.lock:
            self.connects += 1
            self.pairs = [p for p in self.pairs if not p.dead]
            self.pairs.append(pair)
            self.threads = [t for t in self.threads if t.is_alive()] + threads
        for t in threads:
            t.start()
        return mine

    def cut(self, refuse: float = 0.0) -> None:
        """Sever every link; refuse new ones for ``refuse`` seconds."""
        with self.lock:
            self.refuse_until = time.monotonic() + refuse
            pairs = list(self.pairs)
        for pair in pairs:
            pair.kill()

    def stall(self) -> None:
        """Freeze the links that exist (they stay open); new links work."""
        with self.lock:
            for pair in self.pairs:
                pair.stalled = True

    def close(self) -> None:
        self.cut()
        with self.lock:
            threads = list(self.threads)
        for t in threads:
            t.join(10)


class Local:
    """A listener on loopback standing for a backend's: each client's accepted end is
    adopted by the engine."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.clients: list[socket.socket] = []

    def client(self, near: NearEnd, target: str) -> socket.socket:
        client = socket.create_connection(self.server.getsockname(), timeout=60)
        accepted, _ = self.server.accept()
        near.adopt(accepted, target)
        self.clients.append(client)
        return client

    def close(self) -> None:
        for c in self.clients:
            c.close()
        self.server.close()


def read_to_end(sock: socket.socket, until: Callable[[bytes], bool] | None = None,
                timeout: float = 60.0) -> tuple[bytes, str]:
    """Read until the end (or ``until(data so far)``); say how it ended: eof, reset, until."""
    sock.settimeout(timeout)
    got = bytearray()
    try:
        while data := sock.recv(65536):
            got += data
            if until is not None and until(bytes(got)):
                return bytes(got), "until"
    except ConnectionResetError:
        return bytes(got), "reset"
    return bytes(got), "eof"


def ended_by(sock: socket.socket, timeout: float = 60.0) -> str:
    """How a connection on which nothing more is expected ends: eof or reset."""
    return read_to_end(sock, timeout=timeout)[1]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))
