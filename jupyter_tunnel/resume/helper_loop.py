"""The remote helper's event loop and channels (the stream logic is in ``helper_main``).

Embedded in the helper program (see ``remote.py``) after ``helper_start``; stdlib only,
Python 3.8 syntax at runtime.  One thread, ``selectors``, non-blocking sockets: each
round dispatches the ready sockets, then ``_tick`` checks the outage limits, closes the
channels done closing and sets every socket's interest from the state (a target is read
only while its writer has room and its channel is not backed up).
"""

from __future__ import annotations

import selectors
import signal
import socket
import time
from collections import OrderedDict
from typing import Any

from .frames import (
    Code,
    Frame,
    FrameDecoder,
    FrameError,
    ProtocolError,
    Refuse,
    VersionError,
)
from .helper_start import Settings
from .replay import ACK_DELAY, Budget, Overflow, Stream

#: HELLO NEW with this target (and stream id 0) opens a control channel
CONTROL_TARGET = "jupyter-tunnel:control"
READ_SIZE = 256 * 1024
#: stop reading a target while its channel has this much not yet sent
HIGH_WATER = 512 * 1024
MAX_CHANNELS = 1024
#: a closing channel that does not take its last frames is dropped after this long
CLOSE_GRACE = 5.0
#: a channel must say HELLO within this long
HELLO_TIMEOUT = 30.0
#: how many ended streams are remembered, with how they ended
TOMBSTONES = 1024
#: a tombstone's code for a stream that ended cleanly (every Code is above it)
COMPLETE = 0

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE


class Channel:
    """One connection from the laptop to the Unix socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = FrameDecoder()
        self.out = bytearray()
        self.held: Held | None = None
        self.greeted = False  # HELLO seen
        self.control = False
        self.waiting = False  # a NEW's connect is under way: frames wait in ``pending``
        self.pending: list[Frame] = []
        self.closing_at: float | None = None  # close once ``out`` is sent
        self.heard = time.monotonic()  # when the laptop last sent something

    def send(self, frame: Frame) -> None:
        if self.closing_at is None:
            self.out += frame.encode()


class Held:
    """A stream and its target connection."""

    def __init__(self, stream: Stream, target: socket.socket) -> None:
        self.stream = stream
        self.target: socket.socket | None = target
        self.connecting = True
        self.to_target = bytearray()
        self.target_eof = False  # the target sent its EOF
        self.target_shut = False  # we sent the laptop's EOF on to the target
        self.channel: Channel | None = None
        self.last_ack = 0
        self.welcome_owed = False  # a NEW's WELCOME(0), to ride with the first answer
        self.owed_since: float | None = None  # since when the laptop is owed WELCOME or ACK
        self.reason = ""  # why it was reset

    @property
    def delivered(self) -> int:
        """Positions written to the target (the EOF's once passed on): what we acknowledge."""
        reader = self.stream.reader
        pending_eof = 1 if reader.eof and not self.target_shut else 0
        return reader.received - len(self.to_target) - pending_eof

    @property
    def ack_at(self) -> float | None:
        """When the WELCOME or ACK owed goes alone, if no DATA or EOF took it along by
        then (ACK_DELAY after it was owed); None if nothing is owed, or no channel or
        target (``_progress``, which sends it, needs both)."""
        if self.channel is None or self.target is None or self.owed_since is None:
            return None
        if not self.welcome_owed and self.delivered <= self.last_ack:
            return None
        return self.owed_since + ACK_DELAY

    def told(self) -> int:
        """The laptop is told (WELCOME or ACK) what reached the target: that count."""
        self.welcome_owed = False
        self.last_ack = self.delivered
        pending = self.last_ack < self.stream.reader.received  # still on its way there
        self.owed_since = time.monotonic() if pending else None
        return self.last_ack

    def ack_wanted(self, now: float) -> bool:
        """Send what is owed now, alone if need be: its time came, an ACK's worth of bytes
        waits, or the laptop's EOF reached a target that has ended its side too (nothing
        will come to ride with: the last ACK is acknowledged at once).

        The EOF of a target still open waits for the answer or the target's EOF, usually
        a moment later: written alone, the ACK and then that EOF are two small writes,
        and the second (with all that follows on the SSH connection, other streams'
        included) would wait for the first's delayed TCP ACK."""
        at = self.ack_at
        if at is None:
            return False
        unacked = self.delivered - self.last_ack
        return now >= at or unacked >= self.stream.reader.ack_every \
            or (self.target_shut and self.target_eof and unacked > 0)

    @property
    def finished(self) -> bool:
        return self.target is None and self.stream.reset_code is None


class Loop:
    """The event loop of one helper, and its channels."""

    def __init__(self, settings: Settings, listener: socket.socket, files: list[str]) -> None:
        self.settings = settings
        self.listener = listener
        self.files = files  # removed at the end, before the laptops hear of it
        self.sel = selectors.DefaultSelector()
        self.streams: dict[int, Held] = {}
        self.channels: set[Channel] = set()
        self.tombs: OrderedDict[int, tuple[int, str, int]] = OrderedDict()  # code, why, count
        self.budget = Budget(settings.tunnel_limit)
        self.alone_since: float | None = time.monotonic()
        self.running = True
        self._events: dict[socket.socket, int] = {}
        self._wake_r, self._wake_w = socket.socketpair()

    # --- the loop ---------------------------------------------------------------------

    def run(self) -> None:
        """Serve until shutdown, the signal TERM, or no laptop for the outage limit."""
        for s in (self._wake_r, self._wake_w, self.listener):
            s.setblocking(False)
        signal.set_wakeup_fd(self._wake_w.fileno())
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        self._set(self.listener, _READ, ("listen", None))
        self._set(self._wake_r, _READ, ("wake", None))
        try:
            while self.running:
                for key, mask in self.sel.select(self._timeout()):
                    kind, obj = key.data
                    try:
                        self._dispatch(kind, obj, mask)
                    except Exception as exc:  # a bug must cost one stream, not the helper
                        self._fault(kind, obj, exc)
                self._tick(time.monotonic())
        finally:
            self.shutdown()  # even after a bug: the targets must see resets, not EOFs

    def _stop(self, signum: int, frame: Any) -> None:
        self.running = False

    def _timeout(self) -> float:
        now, outage = time.monotonic(), self.settings.outage
        ends = [h.stream.held_since + outage for h in self.streams.values()
                if h.stream.held_since is not None]
        if self.alone_since is not None:
            ends.append(self.alone_since + outage)
        if self.settings.keepalive:
            ends += [ch.heard + 3 * self.settings.keepalive for ch in self.channels
                     if ch.control]
        ends += [at for at in (h.ack_at for h in self.streams.values()) if at is not None]
        return max(0.01, min([2.0, *(t - now for t in ends)]))

    def _dispatch(self, kind: str, obj: Any, mask: int) -> None:
        if kind == "listen":
            self._accept()
        elif kind == "wake":
            while True:
                try:
                    if not self._wake_r.recv(512):
                        break
                except OSError:
                    break
        elif kind == "channel":
            if mask & _WRITE:
                self._flush(obj)
            if mask & _READ and obj in self.channels:
                self._channel_read(obj)
        elif kind == "target":
            if mask & _WRITE and obj.target is not None:
                self._target_write(obj)
            if mask & _READ and obj.target is not None:
                self._target_read(obj)

    def _fault(self, kind: str, obj: Any, exc: Exception) -> None:
        if kind == "channel" and obj.held is not None:
            self._reset(obj.held, Code.PROTOCOL, f"helper error: {exc}")
        elif kind == "channel":
            self._drop(obj)
        elif kind == "target":
            self._reset(obj, Code.PEER_RESET, f"helper error: {exc}")

    def _set(self, sock: socket.socket, events: int, data: Any = None) -> None:
        old = self._events.get(sock, 0)
        if events == old:
            return
        if sock.fileno() < 0:  # closed meanwhile
            self._forget_sock(sock)
            return
        if not events:
            self.sel.unregister(sock)
            del self._events[sock]
        elif not old:
            self.sel.register(sock, events, data)
            self._events[sock] = events
        else:
            self.sel.modify(sock, events, self.sel.get_key(sock).data)
            self._events[sock] = events

    def _forget_sock(self, sock: socket.socket) -> None:
        if sock in self._events:
            self.sel.unregister(sock)
            del self._events[sock]

    def _tick(self, now: float) -> None:
        for held in list(self.streams.values()):
            self._progress(held)
            if held.stream.outage_exceeded(self.settings.outage, now) \
                    and held.stream.stream_id in self.streams:
                if held.finished:
                    self._forget(held)
                else:
                    self._reset(held, Code.OUTAGE, f"outage longer than {self.settings.outage:g}s")
        keepalive = self.settings.keepalive
        for ch in list(self.channels):
            if ch.closing_at is not None and (not ch.out or now - ch.closing_at > CLOSE_GRACE):
                self._drop(ch)
            elif ch.control and keepalive and now - ch.heard > 3 * keepalive:
                self._drop(ch)  # a stale control channel: its SSH session lingers, dead
            elif not ch.greeted and now - ch.heard > HELLO_TIMEOUT:
                self._drop(ch)
            else:
                # a closing channel still reads (and drops): a Unix socket closed with
                # unread bytes resets its peer, which could lose our last frames
                reading = 0 if ch.waiting else _READ
                self._set(ch.sock, reading | (_WRITE if ch.out else 0), ("channel", ch))
        for held in self.streams.values():
            self._interest(held)
        if any(ch.control and ch.closing_at is None for ch in self.channels):
            self.alone_since = None
        elif self.alone_since is None:
            self.alone_since = now
        elif now - self.alone_since > self.settings.outage:
            self.running = False  # the owner is gone: nothing to hold for

    def _interest(self, held: Held) -> None:
        if held.target is None:
            return
        ch = held.channel
        events = 0
        if held.connecting or held.to_target:
            events |= _WRITE
        if not held.connecting and not held.target_eof and held.stream.writer.room > 0 \
                and (ch is None or len(ch.out) < HIGH_WATER):
            events |= _READ
        self._set(held.target, events, ("target", held))

    # --- channels ---------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self.channels) >= MAX_CHANNELS:
                sock.close()
                continue
            sock.setblocking(False)
            ch = Channel(sock)
            self.channels.add(ch)
            self._set(sock, _READ, ("channel", ch))

    def _channel_read(self, ch: Channel) -> None:
        try:
            data = ch.sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._lost(ch)
            return
        ch.heard = time.monotonic()
        if ch.closing_at is not None:
            return
        try:
            frames = ch.decoder.feed(data)
        except VersionError as exc:
            self._refuse(ch, Code.VERSION, str(exc))
            return
        except FrameError as exc:
            self._protocol_error(ch, exc)
            return
        for frame in frames:
            if ch.closing_at is not None or ch not in self.channels:
                return
            if ch.waiting:
                ch.pending.append(frame)
                continue
            try:
                self._on_frame(ch, frame)
            except ProtocolError as exc:
                self._protocol_error(ch, exc)
            except Overflow as exc:
                if ch.held is not None:
                    self._reset(ch.held, Code.OVERFLOW, str(exc))
        held = ch.held
        if held is not None and held.to_target and held.target is not None \
                and not held.connecting:
            self._target_write(held)  # at once, once for all the frames of this read

    def _protocol_error(self, ch: Channel, exc: Exception) -> None:
        if ch.held is not None:
            self._reset(ch.held, Code.PROTOCOL, str(exc))
        elif not ch.greeted:
            self._refuse(ch, Code.PROTOCOL, str(exc))
        else:
            self._drop(ch)

    def _flush(self, ch: Channel) -> None:
        if not ch.out:
            return
        try:
            n = ch.sock.send(ch.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            ch.out.clear()
            self._lost(ch)
            return
        del ch.out[:n]

    def _send(self, ch: Channel, frame: Frame) -> None:
        ch.send(frame)
        self._flush(ch)

    def _close_after(self, ch: Channel) -> None:
        """Send what is queued, then close; what the laptop still sends is read and dropped."""
        if ch.held is not None and ch.held.channel is ch:
            ch.held.channel = None
        ch.held = None
        self._flush(ch)
        if ch in self.channels:  # the flush finds out when the laptop has gone
            ch.closing_at = time.monotonic()
            self._set(ch.sock, _READ | (_WRITE if ch.out else 0), ("channel", ch))

    def _refuse(self, ch: Channel, code: int, reason: str) -> None:
        ch.send(Refuse(code, reason))
        self._close_after(ch)

    def _drop(self, ch: Channel) -> None:
        self._forget_sock(ch.sock)
        ch.sock.close()
        self.channels.discard(ch)
        if ch.held is not None and ch.held.channel is ch:
            ch.held.channel = None
            ch.held.stream.hold(time.monotonic())
        ch.held = None

    def _lost(self, ch: Channel) -> None:
        """The laptop's end went away: hold its stream for a resume."""
        held = ch.held
        self._drop(ch)
        if held is not None and held.finished:
            self._forget(held)

    # --- what the stream logic provides (helper_main) --------------------------------

    def _on_frame(self, ch: Channel, frame: Frame) -> None:
        raise NotImplementedError

    def _target_write(self, held: Held) -> None:
        raise NotImplementedError

    def _target_read(self, held: Held) -> None:
        raise NotImplementedError

    def _progress(self, held: Held) -> None:
        raise NotImplementedError

    def _reset(self, held: Held, code: int, reason: str) -> None:
        raise NotImplementedError

    def _forget(self, held: Held) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        raise NotImplementedError
