"""The remote helper's streams: it holds the far end of every resumable connection.

Embedded last in the helper program (see ``remote.py``), after ``helper_loop``; stdlib
only, Python 3.8 syntax at runtime.

Each connection to the Unix socket (a *channel*) starts with HELLO: NEW connects to the
target and answers WELCOME(0) once connected (REFUSE CONNECT if not); RESUME reattaches
a held stream (taking it from a stale channel if need be), answers WELCOME(count) and
replays.  A NEW whose target is ``CONTROL_TARGET`` (stream id 0) opens a control
channel: while one is open the helper lives on; an ACK on it is a keepalive (echoed) and
a RESET with code SHUTDOWN ends the helper.
The helper acknowledges only bytes written to the target, so the laptop's own limit
bounds what the helper holds in that direction; it reads from the target at most the
writer's room, so an absent laptop pauses the application.  Any stream that cannot end
cleanly ends with an RST to the target and a RESET to the laptop (if attached).
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import struct
import time

from .frames import (
    VERSION,
    Ack,
    Code,
    Data,
    Eof,
    Frame,
    Hello,
    Mode,
    ProtocolError,
    Refuse,
    Reset,
    Welcome,
    secret_ok,
    split_target,
)
from .helper_loop import (
    _WRITE,
    CLOSE_GRACE,
    COMPLETE,
    CONTROL_TARGET,
    READ_SIZE,
    TOMBSTONES,
    Channel,
    Held,
)
from .helper_reverse import Reverse
from .helper_start import Settings
from .replay import Overflow, Stream

_RESET_ON_CLOSE = struct.pack("ii", 1, 0)
_CLEAN_CLOSE = struct.pack("ii", 0, 0)


def _rst(sock: socket.socket) -> None:
    """Close with a reset, never a clean FIN: the application must not see a complete end."""
    with contextlib.suppress(OSError):
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    sock.close()


def _connect(where: tuple[str, int] | str) -> socket.socket:
    """A non-blocking socket connecting (or connected) to the target."""
    if isinstance(where, str):
        # a local Unix socket answers at once; a blocking connect avoids EAGAIN's ambiguity
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5.0)
        try:
            sock.connect(where)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock
    family, kind, proto, _, address = socket.getaddrinfo(
        where[0], where[1], 0, socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setblocking(False)
    err = sock.connect_ex(address)
    if err not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
        sock.close()
        raise OSError(err, os.strerror(err))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    # until the stream is complete, any close is a reset: also the kernel's, should the
    # helper be killed (a clean end switches this off before closing)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    return sock


class Helper(Reverse):
    """One helper: the streams' frames, their targets, and how they end."""

    # --- frames -----------------------------------------------------------------------

    def _on_frame(self, ch: Channel, frame: Frame) -> None:
        if not ch.greeted:
            if not isinstance(frame, Hello):
                raise ProtocolError("the first frame must be HELLO")
            ch.greeted = True
            self._hello(ch, frame)
            return
        if ch.control:
            if isinstance(frame, Reset) and frame.code == Code.SHUTDOWN:
                self.running = False  # shutdown() closes this channel once the files are gone
            elif isinstance(frame, Reset):
                self._close_after(ch)
            elif isinstance(frame, Ack):  # a keepalive: echoed, so the laptop can tell too
                self._send(ch, frame)
            elif self._reverse_frame(ch, frame):
                pass
            else:
                raise ProtocolError("only ACK, RESET and LISTEN on a control channel")
            return
        held = ch.held
        if held is None:
            raise ProtocolError("a frame for no stream")
        if isinstance(frame, (Data, Eof)):
            reader = held.stream.reader
            before = reader.received
            new = reader.receive(frame)
            if reader.received > before and held.owed_since is None:
                held.owed_since = time.monotonic()
            if new:
                held.to_target += new
                if len(held.to_target) > self.settings.stream_limit:
                    raise Overflow("the laptop sent more than the stream limit unacknowledged")
            self._progress(held)
        elif isinstance(frame, Ack):
            held.stream.on_ack(frame.received)
            self._progress(held)
        elif isinstance(frame, Reset):
            self._end(held, frame.code, frame.reason)
        else:
            raise ProtocolError(f"unexpected {type(frame).__name__.upper()} frame")

    def _hello(self, ch: Channel, hello: Hello) -> None:
        if hello.version != VERSION:
            self._refuse(ch, Code.VERSION, f"protocol version {hello.version}")
        elif not secret_ok(self.settings.secret, hello.secret):
            self._refuse(ch, Code.SECRET, "wrong secret")
        elif hello.mode == Mode.NEW and hello.target == CONTROL_TARGET:
            if hello.stream_id != 0:
                raise ProtocolError("a control channel has stream id 0")
            ch.control = True
            self._send(ch, Welcome(0))
            self._control_opened(ch)
        elif hello.mode == Mode.NEW:
            self._new(ch, hello)
        else:
            self._resume(ch, hello)

    def _new(self, ch: Channel, hello: Hello) -> None:
        sid = hello.stream_id
        if sid in self.streams or sid in self.tombs:
            self._refuse(ch, Code.STREAM_EXISTS, f"stream {sid} exists")
            return
        try:
            target = _connect(split_target(hello.target))
        except (ValueError, OSError) as exc:
            self._refuse(ch, Code.CONNECT, f"{hello.target}: {exc}")
            return
        stream = Stream(sid, self.settings.stream_limit, self.budget)
        held = Held(stream, target)
        held.channel, ch.held, ch.waiting = ch, held, True
        self.streams[sid] = held
        self._set(target, _WRITE, ("target", held))

    def _connected(self, held: Held) -> None:
        assert held.target is not None
        err = held.target.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        ch = held.channel
        if err:
            if ch is not None:
                ch.send(Refuse(Code.CONNECT, os.strerror(err)))
            self._end(held, Code.CONNECT, os.strerror(err))  # closes the channel after it
            return
        held.connecting = False
        if ch is None:  # the laptop left before the answer: it will RESUME or give up
            return
        ch.waiting = False
        # the WELCOME rides with the first answer (see ACK_DELAY): WELCOME alone and then
        # DATA would be two small writes, the second held for the first's TCP ACK
        held.welcome_owed, held.owed_since = True, time.monotonic()
        pending, ch.pending = ch.pending, []
        for frame in pending:
            if ch.held is not held:
                break
            try:
                self._on_frame(ch, frame)
            except ProtocolError as exc:
                self._protocol_error(ch, exc)
            except Overflow as exc:
                self._reset(held, Code.OVERFLOW, str(exc))

    def _resume(self, ch: Channel, hello: Hello) -> None:
        held = self.streams.get(hello.stream_id)
        if held is None:
            code, reason, count = self.tombs.get(hello.stream_id,
                                                 (Code.UNKNOWN_STREAM, "no such stream", 0))
            if code == COMPLETE:  # it ended cleanly while the laptop missed our last ACK
                ch.send(Welcome(count))
                self._close_after(ch)
            else:
                self._refuse(ch, code, reason)
            return
        old = held.channel
        if old is not None:  # a stale channel (its SSH session lingers): the new one wins
            self._close_after(old)
            held.stream.hold(time.monotonic())
        if held.connecting:
            self._refuse(ch, Code.BAD_RESUME, "the stream is still connecting")
            return
        try:
            replay = held.stream.resume(hello.received)
        except ProtocolError as exc:
            self._reset(held, Code.BAD_RESUME, str(exc))
            self._refuse(ch, Code.BAD_RESUME, str(exc))
            return
        held.channel, ch.held = ch, held
        self._claimed(hello.stream_id)
        ch.send(Welcome(held.told()))
        for frame in replay:
            ch.send(frame)
        self._flush(ch)
        self._progress(held)

    # --- targets ----------------------------------------------------------------------

    def _target_write(self, held: Held) -> None:
        assert held.target is not None
        if held.connecting:
            self._connected(held)
            return
        try:
            n = held.target.send(held.to_target)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._reset(held, Code.PEER_RESET, f"target: {exc}")
            return
        del held.to_target[:n]
        self._progress(held)

    def _target_read(self, held: Held) -> None:
        assert held.target is not None
        writer = held.stream.writer
        size = min(READ_SIZE, writer.room)
        if size <= 0:
            return
        try:
            data = held.target.recv(size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._reset(held, Code.PEER_RESET, f"target: {exc}")
            return
        try:
            frames: list[Frame] = list(writer.write(data)) if data else [writer.write_eof()]
        except Overflow as exc:
            self._reset(held, Code.OVERFLOW, str(exc))
            return
        if not data:
            held.target_eof = True
        if held.channel is not None:  # when detached, the replay sends them later
            self._owed(held, held.channel)
            for frame in frames:
                held.channel.send(frame)
            self._flush(held.channel)
        self._progress(held)

    def _progress(self, held: Held) -> None:
        """Pass the laptop's EOF on, acknowledge, and close a stream that is complete."""
        stream, target = held.stream, held.target
        if target is None:
            return
        if stream.reader.eof and not held.to_target and not held.target_shut \
                and not held.connecting:
            try:
                target.shutdown(socket.SHUT_WR)
            except OSError as exc:
                self._reset(held, Code.PEER_RESET, f"target: {exc}")
                return
            held.target_shut = True
        ch = held.channel
        if ch is not None and held.ack_wanted(time.monotonic()):
            self._owed(held, ch)  # alone: no DATA came to take it along
            self._flush(ch)
        if stream.writer.eof_acked and held.target_shut and held.last_ack == stream.reader.received:
            # complete both ways: the target gets its clean close; the record stays for a
            # resume of a laptop that did not hear our last ACK, until its channel closes
            self._forget_sock(target)
            if target.family != socket.AF_UNIX:
                with contextlib.suppress(OSError):
                    target.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _CLEAN_CLOSE)
            target.close()
            held.target = None
            stream.close()
            if ch is None:
                self._forget(held)

    def _owed(self, held: Held, ch: Channel) -> None:
        """Queue the WELCOME and ACK owed to the laptop, in front of the frames that follow
        in the same write."""
        welcome, before = held.welcome_owed, held.last_ack
        count = held.told()
        if welcome:
            ch.send(Welcome(0))
        if count > before:
            ch.send(Ack(count))

    # --- ends -------------------------------------------------------------------------

    def _reset(self, held: Held, code: int, reason: str) -> None:
        """End a stream as incomplete: RST to the target, RESET to the laptop if attached."""
        frame = held.stream.reset(code, reason)
        if held.channel is not None:
            self._owed(held, held.channel)  # a RESET before WELCOME would be a protocol error
            held.channel.send(frame)
        self._end(held, code, reason)

    def _end(self, held: Held, code: int, reason: str) -> None:
        if held.target is not None:
            self._forget_sock(held.target)
            _rst(held.target)
            held.target = None
        if not held.reason:
            held.reason = reason
        held.stream.reset(code, reason)
        self._forget(held)

    def _tomb(self, held: Held) -> None:
        """Remember how a stream ended, for a laptop that resumes it afterwards."""
        stream = held.stream
        if stream.reset_code is None:
            self.tombs[stream.stream_id] = (COMPLETE, "", stream.reader.received)
        else:
            self.tombs[stream.stream_id] = (stream.reset_code, held.reason, 0)
        while len(self.tombs) > TOMBSTONES:
            self.tombs.popitem(last=False)

    def _forget(self, held: Held) -> None:
        held.stream.close()
        if self.streams.pop(held.stream.stream_id, None) is not None:
            self._tomb(held)
        ch = held.channel
        held.channel = None
        if ch is not None and ch.held is held:
            self._close_after(ch)

    def shutdown(self) -> None:
        """Reset every stream held, tell attached laptops, close everything."""
        self._close_listeners()
        for held in list(self.streams.values()):
            try:
                if held.finished:
                    self._forget(held)
                else:
                    self._reset(held, Code.SHUTDOWN, "the helper is shutting down")
            except Exception:
                if held.target is not None:
                    _rst(held.target)
        for path in self.files:  # gone before any laptop sees its channel close
            _unlink(path)
        self._forget_sock(self.listener)
        self.listener.close()
        # the last frames are sent, then each channel is read until the laptop closes it:
        # unread bytes would turn our close into a reset that may lose those frames
        deadline = time.monotonic() + CLOSE_GRACE
        waiting = selectors.DefaultSelector()
        for ch in list(self.channels):
            self._forget_sock(ch.sock)
            try:
                ch.sock.settimeout(CLOSE_GRACE / 5)
                ch.sock.sendall(ch.out)
                ch.sock.shutdown(socket.SHUT_WR)
                ch.sock.setblocking(False)
                waiting.register(ch.sock, selectors.EVENT_READ, ch)
            except OSError:
                self._drop(ch)
        while waiting.get_map() and time.monotonic() < deadline:
            for key, _ in waiting.select(max(0.0, deadline - time.monotonic())):
                try:
                    if key.fileobj.recv(65536):  # type: ignore[union-attr]
                        continue
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    pass
                waiting.unregister(key.fileobj)
                self._drop(key.data)
        for ch in list(self.channels):
            self._drop(ch)
        waiting.close()


def serve(settings: Settings, listener: socket.socket, sock_path: str, state_path: str) -> None:
    """Run the helper; remove its socket and state file when it ends."""
    try:
        Helper(settings, listener, [sock_path, state_path]).run()
    finally:
        _unlink(sock_path)
        _unlink(state_path)


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
