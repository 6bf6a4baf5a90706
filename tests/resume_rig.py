"""The rig of tests/test_resume_remote.py: the helper run as a subprocess, a laptop side that
speaks frames to its socket, and target servers."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from jupyter_tunnel import procinfo
from jupyter_tunnel.resume import remote
from jupyter_tunnel.resume.frames import (
    VERSION,
    Ack,
    Code,
    Data,
    Eof,
    Frame,
    FrameDecoder,
    Hello,
    Mode,
    Refuse,
    Reset,
    Welcome,
)
from jupyter_tunnel.resume.replay import Stream

SECRET = "s3cret-" + "x" * 20


PYTHON38 = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")))


PYTHONS = [
    pytest.param(sys.executable, id="py3"),
    pytest.param(PYTHON38[0] if PYTHON38 else "", id="py38",
                 marks=pytest.mark.skipif(not PYTHON38, reason="no Python 3.8 here")),
]


def wait_for(cond: Callable[[], object], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or cond}")
        time.sleep(0.02)


@dataclass
class Helper:
    python: str
    home: Path
    run_dir: Path
    started: list[dict[str, Any]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home),
                "XDG_RUNTIME_DIR": str(self.run_dir), "LANG": "C"}

    def start(self, tunnel_id: str = "t1", outage: float = 30.0, stream_limit: int = 2**20,
              tunnel_limit: int = 2**24, secret: str = SECRET, keepalive: float = 0
              ) -> dict[str, Any]:
        settings = remote.HelperSettings(tunnel_id, secret, stream_limit, tunnel_limit, outage,
                                         keepalive)
        out = subprocess.run(["sh", "-c", remote.command(self.python)],
                             input=remote.start_input(settings), capture_output=True,
                             env=self.env, timeout=30, check=False)
        assert out.stderr == b""
        answer = json.loads(out.stdout)
        if "pid" in answer:
            self.started.append(answer)
        assert out.returncode == (1 if "error" in answer else 0)
        return dict(answer)

    @property
    def folder(self) -> Path:
        return self.run_dir / "jupyter_tunnel" / "resume"

    def gone(self, answer: dict[str, Any]) -> bool:
        return not procinfo.is_alive(answer["pid"], answer["started"])

    def stop(self, answer: dict[str, Any]) -> None:
        """Shut the helper down through a control channel; SIGKILL if that fails."""
        try:
            with control(answer["socket"]) as sock:
                sock.sendall(Reset(Code.SHUTDOWN).encode())
                frames_until_close(sock)
            wait_for(lambda: self.gone(answer), timeout=10, what="the helper gone")
        except (OSError, pytest.fail.Exception):
            if not self.gone(answer):
                os.kill(answer["pid"], 9)
            raise


class Refused(Exception):
    def __init__(self, frame: Refuse | Reset) -> None:
        super().__init__(f"{type(frame).__name__} {Code(frame.code).name}: {frame.reason}")
        self.code = frame.code


class Laptop:
    """One stream's near end, speaking frames over a channel to the helper."""

    def __init__(self, path: str, stream_id: int, limit: int = 2**20,
                 secret: str = SECRET) -> None:
        self.path, self.secret = path, secret.encode()
        self.stream = Stream(stream_id, limit)
        self.sock: socket.socket | None = None
        self.decoder = FrameDecoder()
        self.down = bytearray()
        self.reset: Reset | None = None
        self.resumes = 0
        self.cuts_done = 0

    def _hello(self, hello: Hello) -> tuple[Welcome, list[Frame]]:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(20)
        self.sock.connect(self.path)
        self.decoder = FrameDecoder()
        self.sock.sendall(hello.encode())
        frames: list[Frame] = []
        while not frames:
            data = self.sock.recv(65536)
            assert data, "the helper closed the channel without an answer"
            frames = self.decoder.feed(data)
        first, rest = frames[0], frames[1:]
        if isinstance(first, Refuse):
            self.close()
            raise Refused(first)
        assert isinstance(first, Welcome), first
        return first, rest

    def open(self, target: str) -> None:
        hello = Hello(VERSION, Mode.NEW, self.stream.stream_id, 0, self.secret, target)
        for frame in self._hello(hello)[1]:
            self._on(frame)

    def resume(self, secret: bytes | None = None) -> None:
        count = self.stream.reader.take_count()
        self.resumes += 1
        welcome, rest = self._hello(Hello(VERSION, Mode.RESUME, self.stream.stream_id, count,
                                          secret or self.secret))
        # WELCOME's count first: the ACKs after it may already be higher
        replay = self.stream.resume(welcome.received)
        for frame in rest:
            self._on(frame)
        assert self.sock is not None
        if replay:  # sendall(b"") still sends, and fails if the helper closed (complete)
            self.sock.sendall(b"".join(f.encode() for f in replay))

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _on(self, frame: Frame) -> None:
        if isinstance(frame, Data | Eof):
            self.down += self.stream.reader.receive(frame)
        elif isinstance(frame, Ack):
            self.stream.on_ack(frame.received)
        elif isinstance(frame, Reset):
            self.reset = frame
        else:
            raise AssertionError(f"unexpected {frame}")

    def pump(self, upload: bytes = b"", eof: bool = True, until: Callable[[], bool] | None = None,
             cuts: list[int] | None = None, timeout: float = 60.0) -> None:
        """Send ``upload`` (then EOF), receive, ack; close and resume at each cut (bytes
        received); return when done (both EOFs, ours acknowledged) or ``until``."""
        cuts = sorted(cuts or [])
        sel = selectors.DefaultSelector()
        assert self.sock is not None
        self.sock.setblocking(False)
        sel.register(self.sock, selectors.EVENT_READ)
        out = bytearray()
        pos = self.stream.writer.sent
        deadline = time.monotonic() + timeout
        while True:
            writer, reader = self.stream.writer, self.stream.reader
            assert self.reset is None, self.reset
            assert time.monotonic() < deadline, "the transfer stalled"
            # a cut is due before the end is checked: a cut at the very end must resume too
            if cuts and len(self.down) >= cuts[0]:
                while cuts and len(self.down) >= cuts[0]:  # one cut for all those passed
                    cuts.pop(0)
                    self.cuts_done += 1
                sel.unregister(self.sock)
                self.close()
                out.clear()
                self.resume()
                assert self.sock is not None
                self.sock.setblocking(False)
                sel.register(self.sock, selectors.EVENT_READ)
            if (until or self._done)():
                break
            take = min(writer.room, len(upload) - pos, 256 * 1024)
            if take > 0 and len(out) < 2**20:
                out += b"".join(f.encode() for f in writer.write(upload[pos:pos + take]))
                pos += take
            if eof and pos == len(upload) and not writer.eof:
                out += writer.write_eof().encode()
            if reader.unacked:
                out += Ack(reader.take_count()).encode()
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0)
            sel.modify(self.sock, events)
            for _, mask in sel.select(0.2):
                if mask & selectors.EVENT_WRITE:
                    try:
                        del out[:self.sock.send(out)]
                    except BlockingIOError:
                        pass
                    except OSError:  # the helper closed: read its last words
                        self.sock.setblocking(True)
                        for frame in frames_until_close(self.sock, reset_ok=True):
                            self._on(frame)
                        assert self.reset is None, self.reset
                        raise
                if mask & selectors.EVENT_READ:
                    data = self.sock.recv(2**20)
                    assert data, "the helper closed the channel"
                    for frame in self.decoder.feed(data):
                        self._on(frame)
        if out:
            self.sock.setblocking(True)
            self.sock.sendall(out)
        sel.close()
        self.sock.settimeout(20)

    def _done(self) -> bool:
        return self.stream.writer.eof_acked and self.stream.reader.eof \
            and not self.stream.reader.unacked


def control(path: str, secret: str = SECRET) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX)
    sock.settimeout(20)
    sock.connect(path)
    hello = Hello(VERSION, Mode.NEW, 0, 0, secret.encode(), remote.CONTROL_TARGET)
    sock.sendall(hello.encode())
    assert FrameDecoder().feed(sock.recv(100)) == [Welcome(0)]
    return sock


def frames_until_close(sock: socket.socket, reset_ok: bool = False) -> list[Frame]:
    decoder, frames = FrameDecoder(), []
    try:
        while data := sock.recv(65536):
            frames += decoder.feed(data)
    except ConnectionResetError:
        if not reset_ok:
            raise
    return frames


class Target:
    """A TCP server on loopback; ``handle(conn)`` runs in a thread per connection."""

    def __init__(self, handle: Callable[[socket.socket], Any]) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.handle = handle
        self.results: list[Any] = []
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            self.results.append(self.handle(conn))
        except Exception as exc:
            self.results.append(exc)
        finally:
            conn.close()

    def close(self) -> None:
        self.server.close()


def echo(conn: socket.socket) -> str:
    while data := conn.recv(65536):
        conn.sendall(data)
    conn.shutdown(socket.SHUT_WR)
    return "eof"


def bulk(down: bytes) -> Callable[[socket.socket], Any]:
    """Send ``down`` in small slow-ish pieces while reading the upload; return its sha256."""

    def handle(conn: socket.socket) -> str:
        got = hashlib.sha256()

        def read() -> None:
            while data := conn.recv(65536):
                got.update(data)

        reader = threading.Thread(target=read)
        reader.start()
        for i in range(0, len(down), 32768):
            conn.sendall(down[i:i + 32768])
            if i % (1024 * 1024) == 0:
                time.sleep(0.01)
        conn.shutdown(socket.SHUT_WR)
        reader.join()
        return got.hexdigest()

    return handle


def until_reset(conn: socket.socket) -> str:
    """Read until the end; say whether it came as a reset or an EOF."""
    conn.settimeout(60)
    try:
        while conn.recv(65536):
            pass
    except ConnectionResetError:
        return "reset"
    return "eof"

