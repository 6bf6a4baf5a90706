"""The laptop side's streams: frames from the helper, local sockets, how streams end.

Part of ``NearEnd`` (see ``near``); the links and the loop are in ``near_loop``.
"""

from __future__ import annotations

import logging
import socket
import time

from .frames import (
    VERSION,
    Ack,
    Code,
    Data,
    Eof,
    Frame,
    FrameError,
    Hello,
    Mode,
    ProtocolError,
    Refuse,
    Reset,
    Welcome,
)
from .helper_loop import CONTROL_TARGET
from .near_loop import CONTROL, READ_SIZE, Link, Loop, NearStream, rst, set_linger
from .replay import Overflow, Stream

log = logging.getLogger(__name__)


class Streams(Loop):
    """The stream logic of ``NearEnd``."""

    _secret: bytes
    _error: str
    _next_id: int
    #: traffic of the local connections (what the tunnel's counters show): bytes written to
    #: them, bytes read from them, connections adopted
    bytes_in = 0
    bytes_out = 0
    adopted = 0

    def _connected(self, key: object, result: socket.socket | OSError, now: float) -> None:
        if isinstance(result, OSError):
            self._failed(now, str(result))
            return
        if isinstance(key, tuple):  # a RESET to deliver: RESUME, then say it, then go
            doomed = self._doomed.pop(key, None)
            if doomed is None:
                result.close()
                return
            received, code, reason, _ = doomed
            link = Link(result, None, Mode.RESUME)
            link.send(Hello(VERSION, Mode.RESUME, key[1], received, self._secret))
            link.send(Reset(code, reason))
            link.closing_at = now
        elif key == CONTROL:
            link = Link(result, None, Mode.NEW)
            link.send(Hello(VERSION, Mode.NEW, 0, 0, self._secret, CONTROL_TARGET))
            self._control = link
            self._next_ping = now + self.settings.keepalive
        else:
            assert isinstance(key, NearStream)
            st = key
            if self._streams.get(st.stream.stream_id) is not st or st.link is not None:
                result.close()  # ended meanwhile
                return
            sid, writer = st.stream.stream_id, st.stream.writer
            if st.fresh and st.local is not None and not st.local_eof:
                # what the client sent meanwhile goes in HELLO's write: HELLO alone, then
                # the request, would be two small writes (see replay.ACK_DELAY)
                self._local_read(st)
                if self._streams.get(sid) is not st:  # reset by the read
                    result.close()
                    return
            if st.fresh:  # its bytes so far follow HELLO at once: the helper keeps them
                link = Link(result, st, Mode.NEW)
                link.send(Hello(VERSION, Mode.NEW, sid, 0, self._secret, st.target))
                for frame in writer.replay_from(writer.acked):
                    link.send(frame)
                st.fresh, st.attached = False, True
                st.news += 1
            else:
                link = Link(result, st, Mode.RESUME)
                link.send(Hello(VERSION, Mode.RESUME, sid, st.stream.reader.take_count(),
                                self._secret))
            st.link = link
        self._links.add(link)
        self._flush(link)

    def _link_read(self, link: Link) -> None:
        try:
            data = link.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._lost(link)
            return
        link.heard = time.monotonic()
        if link.closing_at is not None:
            return  # read and dropped: unread bytes would turn our close into a reset
        try:
            for frame in link.decoder.feed(data):
                if link.closing_at is not None or link not in self._links:
                    break
                self._on_frame(link, frame)
        except ProtocolError as exc:  # FrameError included
            self._broken(link, exc)
            return
        st = link.owner
        if st is not None and st.link is link and st.attached:
            reader = st.stream.reader
            # at an ACK's worth or the EOF; else it rides with our next DATA or EOF, or
            # goes alone ACK_DELAY after the bytes came (``_send_due_acks``)
            if reader.ack_due:
                link.send(Ack(reader.take_count()))
            self._local_write(st)
        if link in self._links:
            self._flush(link)

    def _broken(self, link: Link, exc: Exception) -> None:
        st = link.owner
        if st is not None and st.link is link:
            self._reset(st, Code.PROTOCOL, str(exc))
        elif link in self._links:
            self._lost(link)

    # --- frames ---------------------------------------------------------------------------

    def _on_frame(self, link: Link, frame: Frame) -> None:
        if link is self._control:
            self._control_frame(link, frame)
            return
        st = link.owner
        if st is None or st.link is not link:
            raise ProtocolError("a frame for no stream")
        if not link.welcomed:
            if isinstance(frame, Welcome):
                self._welcome(st, link, frame)
            elif isinstance(frame, Refuse):
                self._refused(st, link, frame)
            else:
                raise ProtocolError("the first frame must be WELCOME or REFUSE")
        elif isinstance(frame, (Data, Eof)):
            st.to_local += st.stream.reader.receive(frame, link.heard)
        elif isinstance(frame, Ack):
            st.stream.on_ack(frame.received)
            self._check_done(st)
        elif isinstance(frame, Reset):
            self._end(st, f"reset by the helper: {_name(frame.code)} {frame.reason}")
        else:
            raise ProtocolError(f"unexpected {type(frame).__name__.upper()} frame")

    def _control_frame(self, link: Link, frame: Frame) -> None:
        if isinstance(frame, Welcome) and not link.welcomed:
            link.welcomed = True
            self._down_since, self._error = None, ""
            self._delay = self.settings.retry_first
        elif isinstance(frame, Ack) and link.welcomed:
            pass  # a keepalive's echo: hearing it is what counts
        elif link.welcomed and self._reverse_control(link, frame):
            pass
        elif isinstance(frame, (Refuse, Reset)):
            self._error = f"{_name(frame.code)}: {frame.reason}"
            log.warning("resume: the helper refused the control link: %s", self._error)
            self._let_go(link)
            self._control = None
            self._failed(time.monotonic(), self._error)
        else:
            raise FrameError(f"unexpected {type(frame).__name__.upper()} on the control link")

    def _reverse_control(self, link: Link, frame: Frame) -> bool:
        """BOUND and OFFER on the control link (near_reverse); False: not one of them."""
        return False

    def _welcome(self, st: NearStream, link: Link, frame: Welcome) -> None:
        link.welcomed = True
        self._delay = self.settings.retry_first
        if link.mode == Mode.NEW:
            if frame.received:
                raise ProtocolError("WELCOME to a new stream with bytes received")
            st.stream.held_since, st.opened = None, True
            return
        try:
            replay = st.stream.resume(frame.received)  # before the ACKs that follow it
        except ProtocolError as exc:
            self._reset(st, Code.BAD_RESUME, str(exc))
            return
        st.opened = st.attached = True
        for out in replay:
            link.send(out)
        self._check_done(st)  # a stream the helper completed while we were away

    def _refused(self, st: NearStream, link: Link, frame: Refuse) -> None:
        code = frame.code
        if not st.opened and link.mode == Mode.RESUME and code == Code.UNKNOWN_STREAM \
                and not st.offered:
            st.fresh = True  # our NEW never reached the helper: say it again
            self._let_go(link)
        elif not st.opened and link.mode == Mode.RESUME and code == Code.BAD_RESUME:
            self._let_go(link)  # our NEW is still connecting there: ask again later
            self._failed(time.monotonic(), frame.reason)
        elif not st.opened and link.mode == Mode.NEW and code == Code.STREAM_EXISTS \
                and st.news > 1:
            self._let_go(link)  # our earlier NEW did arrive after all: resume it
        else:
            self._end(st, f"refused by the helper: {_name(code)} {frame.reason}")

    # --- local sockets and ends -----------------------------------------------------------

    def _new_stream(self, sock: socket.socket, target: str, now: float) -> None:
        sid, self._next_id = self._next_id, self._next_id + 1
        try:
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            rst(sock)
            return
        set_linger(sock, True)  # until complete, any close is a reset (ours or the kernel's)
        stream = Stream(sid, self.settings.stream_limit, self._budget)
        self._streams[sid] = NearStream(stream, target, sock, now)
        self.adopted += 1

    def _local_read(self, st: NearStream) -> None:
        assert st.local is not None
        writer = st.stream.writer
        size = min(READ_SIZE, writer.room)
        if size <= 0:
            return
        try:
            data = st.local.recv(size)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._reset(st, Code.PEER_RESET, f"local connection: {exc}")
            return
        try:
            frames: list[Frame] = list(writer.write(data)) if data else [writer.write_eof()]
        except Overflow as exc:
            self._reset(st, Code.OVERFLOW, str(exc))
            return
        st.local_eof = not data
        self.bytes_out += len(data)
        if st.attached and st.link is not None:  # else the replay sends them
            for frame in [*st.stream.reader.riding_ack(), *frames]:  # one write, not two
                st.link.send(frame)
            self._flush(st.link)

    def _local_write(self, st: NearStream) -> None:
        if st.local is not None and st.to_local:
            try:
                n = st.local.send(st.to_local)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._reset(st, Code.PEER_RESET, f"local connection: {exc}")
                return
            del st.to_local[:n]
            self.bytes_in += n
        self._check_done(st)

    def _check_done(self, st: NearStream) -> None:
        """Pass the helper's EOF on once everything before it is written; close a
        complete stream cleanly."""
        local = st.local
        if local is None or st.to_local or not st.stream.reader.eof:
            return
        if not st.local_shut:
            try:
                local.shutdown(socket.SHUT_WR)
            except OSError as exc:
                self._reset(st, Code.PEER_RESET, f"local connection: {exc}")
                return
            st.local_shut = True
        if st.stream.done:
            self._forget_sock(local)
            set_linger(local, False)
            local.close()
            st.local = None
            self._forget_stream(st)
            if st.link is not None:
                self._let_go(st.link)  # after our last ACK

    def _forget_stream(self, st: NearStream) -> None:
        st.stream.close()
        self._streams.pop(st.stream.stream_id, None)

    def _end(self, st: NearStream, why: str) -> None:
        """The stream is over at the helper (reset or refused): reset the local client."""
        log.debug("resume: stream %d ends: %s", st.stream.stream_id, why)
        st.stream.reset(Code.PEER_RESET, why)
        if st.local is not None:
            self._forget_sock(st.local)
            rst(st.local)
            st.local = None
        if st.link is not None:
            self._let_go(st.link)
        self._forget_stream(st)

    def _reset(self, st: NearStream, code: int, reason: str) -> None:
        """End the stream as incomplete: RESET to the helper if linked, RST to the client."""
        received = st.stream.reader.received
        frame = st.stream.reset(code, reason)
        if st.link is not None:
            st.link.send(frame)
        elif st.news:  # the helper may hold it: tell it once a link can be had
            key = ("reset", st.stream.stream_id)
            self._doomed[key] = (received, code, reason, time.monotonic())
        self._end(st, reason)


def _name(code: int) -> str:
    try:
        return Code(code).name
    except ValueError:
        return f"code {code}"
