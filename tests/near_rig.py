"""The rig of tests/test_resume_near.py: a cuttable link to the helper, local clients.

``Proxy.connect`` is the engine's ``connect_link``: a socketpair end whose other end is
relayed (two threads) to a fresh connection to the helper's Unix socket.  ``cut`` severs
every link at once (both sides see the end) and refuses new ones for a while: that is
the outage.  ``stall`` freezes the links that exist without closing them (a half-dead
SSH session), new ones work.  With ``record`` on, each new link keeps what each of its
reads got.  ``Rig`` puts a helper, a proxy, an engine, local clients and targets
together; ``rigs`` is the body of the test module's fixture.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from resume_rig import SECRET, Helper, Target, wait_for

from jupyter_tunnel.resume.near import NearEnd, NearSettings, NearStatus

MiB = 2**20


class Pair:
    """One relayed link: ``near`` (ours, the socketpair's far end) and ``far`` (helper)."""

    def __init__(self, near: socket.socket, far: socket.socket, record: bool = False) -> None:
        self.near, self.far = near, far
        self.record = record
        self.dead = False
        self.stalled = False
        #: if ``record``: (monotonic time, "up" to the helper or "down", bytes) of each
        #: read, in order
        self.reads: list[tuple[float, str, bytes]] = []
        self._left = 2
        self._lock = threading.Lock()

    def pump(self, src: socket.socket, dst: socket.socket) -> None:
        way = "up" if src is self.near else "down"
        try:
            while True:
                data = src.recv(65536)
                if self.record:
                    self.reads.append((time.monotonic(), way, data))
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
        self.record = False  # links made from now on keep what they carry (Pair.reads)

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
        pair = Pair(theirs, far, self.record)
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


@dataclass
class Rig:
    helper: Helper
    answer: dict[str, Any]
    proxy: Proxy
    local: Local
    near: NearEnd | None = None
    changes: list[tuple[float, NearStatus]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def start(self, connect: Callable[[], socket.socket] | None = None,
              **settings: Any) -> NearEnd:
        settings = {"stream_limit": MiB, "tunnel_limit": 64 * MiB, "outage": 60.0,
                    "keepalive": 1.0, **settings}
        self.near = NearEnd(connect or self.proxy.connect, SECRET.encode(),
                            NearSettings(**settings),
                            on_change=lambda s: self.changes.append((time.monotonic(), s)))
        self.near.start()
        wait_for(lambda: self.status().link_up, what="the control link")
        return self.near

    def status(self) -> NearStatus:
        assert self.near is not None
        return self.near.status()

    def target(self, handle: Callable[[socket.socket], Any]) -> Target:
        self.targets.append(Target(handle))
        return self.targets[-1]

    def client(self, target: Target | str) -> socket.socket:
        assert self.near is not None
        return self.local.client(self.near, target if isinstance(target, str)
                                 else target.address)

    def idle(self) -> None:
        """Wait until every stream has ended."""
        wait_for(lambda: self.status().streams_open == 0, what="no stream open")


def rigs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Rig]]:
    """The body of a fixture that makes rigs (``make(**helper settings)``), and tears
    every one down: engine closed, helper gone, no file left."""
    rigs: list[Rig] = []

    def make(**helper_settings: Any) -> Rig:
        base = tmp_path_factory.mktemp("n")  # short: a Unix socket path has 107 bytes
        (base / "run").mkdir(mode=0o700)
        (base / "home").mkdir()
        helper = Helper(sys.executable, base / "home", base / "run")
        answer = helper.start(**{"outage": 60.0, "stream_limit": MiB, **helper_settings})
        rigs.append(Rig(helper, answer, Proxy(answer["socket"]), Local()))
        return rigs[-1]

    yield make
    for rig in rigs:
        if rig.near is not None:
            rig.near.close()
        rig.proxy.close()
        rig.local.close()
        for t in rig.targets:
            t.close()
        for answer in rig.helper.started:
            deadline = time.monotonic() + 10  # close() ended it, or it must be stopped
            while not rig.helper.gone(answer) and time.monotonic() < deadline:
                if not os.path.exists(answer["socket"]):
                    time.sleep(0.05)
                    continue
                rig.helper.stop(answer)
            assert rig.helper.gone(answer)
        base = rig.helper.home.parent
        leftovers = sorted(str(p) for p in base.rglob("*") if not p.is_dir())
        for p in leftovers:
            os.unlink(p)
        assert leftovers == []


def digest(conn: socket.socket) -> str:
    """Read to the end, answer the sha256 of what came, close."""
    got = hashlib.sha256()
    while data := conn.recv(65536):
        got.update(data)
    conn.sendall(got.hexdigest().encode())
    return "ok"


def echo_thread(client: socket.socket, data: bytes, failures: list[str],
                piece: int = 16384) -> threading.Thread:
    """Send ``data`` (then EOF) while reading: the echo must be ``data`` and end cleanly."""

    def run() -> None:
        try:
            out: list[tuple[bytes, str]] = []
            reader = threading.Thread(target=lambda: out.append(read_to_end(client)))
            reader.start()
            for i in range(0, len(data), piece):
                client.sendall(data[i:i + piece])
            client.shutdown(socket.SHUT_WR)
            reader.join()
            assert out and out[0][1] == "eof", out and out[0][1]
            assert hashlib.sha256(out[0][0]).digest() == hashlib.sha256(data).digest()
        except BaseException:
            failures.append(traceback.format_exc())

    thread = threading.Thread(target=run)
    thread.start()
    return thread
