"""Per-stream state on either side: what was sent and not acknowledged, what was received.

Eternal Terminal's BackedWriter/BackedReader: the writer keeps every byte until the peer
acknowledges it and replays the rest after a reconnect; the reader delivers each byte
once, in order.  Pure logic: no I/O, no clock (times are passed in).  Stdlib and
``frames`` only, Python 3.8 syntax, so that the remote helper can embed it too.
"""

from __future__ import annotations

import threading
from collections import deque

from .frames import MAX_PAYLOAD, Ack, Code, Data, Eof, Frame, ProtocolError, Reset

#: a reader asks for an ACK after this many bytes not yet acknowledged
ACK_EVERY = 64 * 1024
#: seconds an ACK may wait for outgoing DATA or EOF to ride with: an ACK written alone and
#: then the answer's DATA are two small writes, and an SSH transport without TCP_NODELAY
#: holds the second until the first's TCP acknowledgement (delayed ACK, ~40 ms)
ACK_DELAY = 0.2


class Overflow(Exception):
    """A stream or tunnel buffer limit would be exceeded: reset the stream (code OVERFLOW)."""


class Budget:
    """Buffered bytes shared by all the streams of a tunnel, under one limit (thread safe)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        """Bytes held by all streams."""
        return self._used

    @property
    def room(self) -> int:
        """Bytes that may still be reserved."""
        return max(0, self.limit - self._used)

    def reserve(self, n: int) -> None:
        """Take ``n`` bytes, or raise Overflow and take nothing."""
        with self._lock:
            if self._used + n > self.limit:
                raise Overflow(f"tunnel buffer limit of {self.limit} bytes exceeded")
            self._used += n

    def release(self, n: int) -> None:
        """Give back ``n`` reserved bytes."""
        with self._lock:
            if n > self._used:
                raise ValueError("releasing more than was reserved")
            self._used -= n


class BackedWriter:
    """The sending side of a stream: positions for written bytes, kept until acknowledged.

    ``limit`` bounds the bytes not acknowledged (and ``budget`` the whole tunnel's); a write
    beyond either raises Overflow.  Callers that apply back-pressure read from their
    socket at most ``room`` bytes, so that a slow or absent peer pauses the application.
    """

    def __init__(self, limit: int, budget: Budget | None = None) -> None:
        self.limit = limit
        self.budget = budget
        self.sent = 0  # bytes written: the position of the next byte
        self.acked = 0  # positions the peer has received, the EOF's included
        self.eof = False
        self._chunks: deque[bytes] = deque()  # positions [acked, sent), in order
        self._closed = False

    @property
    def buffered(self) -> int:
        """Bytes written and not acknowledged."""
        return self.sent - min(self.acked, self.sent)

    @property
    def room(self) -> int:
        """Bytes that may be written now without Overflow."""
        room = self.limit - self.buffered
        if self.budget is not None:
            room = min(room, self.budget.room)
        return max(0, room)

    @property
    def end(self) -> int:
        """The position after everything written, the EOF's included."""
        return self.sent + 1 if self.eof else self.sent

    @property
    def eof_acked(self) -> bool:
        """Our EOF reached the peer."""
        return self.eof and self.acked == self.end

    def write(self, data: bytes) -> list[Data]:
        """Keep ``data`` and return its DATA frames (to send now if connected)."""
        if self.eof or self._closed:
            raise ValueError("write after EOF or reset")
        if not data:
            return []
        if self.buffered + len(data) > self.limit:
            raise Overflow(f"stream buffer limit of {self.limit} bytes exceeded")
        if self.budget is not None:
            self.budget.reserve(len(data))
        frames = []
        for start in range(0, len(data), MAX_PAYLOAD):
            chunk = bytes(data[start : start + MAX_PAYLOAD])
            self._chunks.append(chunk)
            frames.append(Data(self.sent, chunk))
            self.sent += len(chunk)
        return frames

    def write_eof(self) -> Eof:
        """Half-close: no more writes; return the EOF frame."""
        if self._closed:
            raise ValueError("EOF after reset")
        self.eof = True
        return Eof(self.sent)

    def ack(self, received: int) -> None:
        """The peer has received positions ``[0, received)``: drop them."""
        if received < self.acked:
            raise ProtocolError(f"acknowledgement went back from {self.acked} to {received}")
        if received > self.end:
            raise ProtocolError(f"acknowledgement of {received}, only {self.end} sent")
        drop = min(received, self.sent) - min(self.acked, self.sent)
        self.acked = received
        if self._closed:
            return
        released = drop
        while drop:
            head = self._chunks[0]
            if len(head) <= drop:
                self._chunks.popleft()
                drop -= len(head)
            else:
                self._chunks[0] = head[drop:]
                drop = 0
        if self.budget is not None and released:
            self.budget.release(released)

    def replay_from(self, received: int) -> list[Frame]:
        """After a reconnect where the peer has ``received``: the frames it still needs."""
        self.ack(received)
        frames: list[Frame] = []
        offset = self.acked
        for chunk in self._chunks:
            frames.append(Data(offset, chunk))
            offset += len(chunk)
        if self.eof and not self.eof_acked:
            frames.append(Eof(self.sent))
        return frames

    def discard(self) -> None:
        """The stream is over: drop the buffer and give its bytes back to the budget."""
        if not self._closed and self.budget is not None:
            self.budget.release(self.buffered)
        self._closed = True
        self._chunks.clear()


class BackedReader:
    """The receiving side of a stream: each byte delivered once, in order, then acknowledged."""

    def __init__(self, ack_every: int = ACK_EVERY, ack_delay: float = ACK_DELAY) -> None:
        self.ack_every = ack_every
        self.ack_delay = ack_delay
        self.received = 0  # positions received, the EOF's included
        self.eof = False
        self.acked = 0  # the count the peer was last told (ACK, HELLO or WELCOME)
        self.since: float | None = None  # when the oldest position not acknowledged came

    @property
    def unacked(self) -> int:
        """Positions received and not acknowledged yet."""
        return self.received - self.acked

    @property
    def ack_due(self) -> bool:
        """Send an ACK now: enough bytes await it, or the EOF does.

        Otherwise the ACK rides in front of the next DATA or EOF sent (``riding_ack``), or
        goes alone at ``ack_at``, so that the peer's buffer still empties between bursts.
        """
        return self.unacked >= self.ack_every or (self.eof and self.unacked > 0)

    @property
    def ack_at(self) -> float | None:
        """When an ACK must go even alone (``ack_delay`` after its oldest position came);
        None when nothing awaits one."""
        if not self.unacked or self.since is None:  # None: acknowledged since (HELLO)
            return None
        return self.since + self.ack_delay

    def ack_wanted(self, now: float) -> bool:
        """An ACK is to be sent now, alone if need be."""
        at = self.ack_at
        return at is not None and (self.ack_due or now >= at)

    def riding_ack(self) -> list[Ack]:
        """The ACK to put in front of DATA or EOF about to be sent (none if all is acked)."""
        return [Ack(self.take_count())] if self.unacked else []

    def receive(self, frame: Data | Eof, now: float = 0.0) -> bytes:
        """Take a DATA or EOF frame arrived at ``now``; return the new bytes to deliver
        (b"" for a duplicate)."""
        before = self.received
        new = self._receive(frame)
        if self.received > before and not before - self.acked:
            self.since = now  # the oldest position not acknowledged
        return new

    def _receive(self, frame: Data | Eof) -> bytes:
        if isinstance(frame, Eof):
            return self._receive_eof(frame.offset)
        end = frame.offset + len(frame.payload)
        if frame.offset > self.received:
            raise ProtocolError(f"DATA at {frame.offset}, expected {self.received}: a gap")
        if self.eof:
            if end > self.received - 1:
                raise ProtocolError("DATA beyond the EOF")
            return b""
        if end <= self.received:
            return b""
        new = frame.payload[self.received - frame.offset :]
        self.received = end
        return new

    def _receive_eof(self, offset: int) -> bytes:
        if self.eof:
            if offset != self.received - 1:
                raise ProtocolError(f"second EOF at {offset}, first at {self.received - 1}")
            return b""
        if offset != self.received:
            raise ProtocolError(f"EOF at {offset} after {self.received} bytes")
        self.eof = True
        self.received += 1
        return b""

    def take_count(self) -> int:
        """The count to tell the peer (in an ACK, HELLO or WELCOME); it is then acknowledged."""
        self.acked = self.received
        self.since = None
        return self.received


class Stream:
    """Both directions of one forwarded connection, and its outage timing."""

    def __init__(
        self,
        stream_id: int,
        limit: int,
        budget: Budget | None = None,
        ack_every: int = ACK_EVERY,
    ) -> None:
        self.stream_id = stream_id
        self.writer = BackedWriter(limit, budget)
        self.reader = BackedReader(ack_every)
        self.held_since: float | None = None  # when the channel was lost, None if attached
        self.reset_code: int | None = None

    @property
    def done(self) -> bool:
        """Ended cleanly: both EOFs sent and received, ours acknowledged, theirs acked.

        Only then may the connection be closed as complete; anything else is a reset.
        """
        return (
            self.reset_code is None
            and self.writer.eof_acked
            and self.reader.eof
            and self.reader.unacked == 0
        )

    def hold(self, now: float) -> None:
        """The channel was lost at ``now``: keep the stream for a resume."""
        if self.held_since is None:
            self.held_since = now

    def outage_exceeded(self, limit: float, now: float) -> bool:
        """Held for more than ``limit`` seconds at ``now``."""
        return self.held_since is not None and now - self.held_since > limit

    def resume(self, peer_received: int) -> list[Frame]:
        """Reattached; the peer has ``peer_received``: the frames to send it again."""
        if self.reset_code is not None:
            raise ValueError("resume of a reset stream")
        self.held_since = None
        return self.writer.replay_from(peer_received)

    def on_ack(self, received: int) -> None:
        """An ACK arrived."""
        self.writer.ack(received)

    def reset(self, code: int, reason: str = "") -> Reset:
        """End the stream as incomplete; return the RESET to send; buffers are freed."""
        if self.reset_code is None:
            self.reset_code = code
        self.writer.discard()
        return Reset(code, reason)

    def overflow(self, exc: Overflow) -> Reset:
        """The RESET for an Overflow raised by a write."""
        return self.reset(Code.OVERFLOW, str(exc))

    def close(self) -> None:
        """Forget a stream that is done (or reset): give its buffer back."""
        self.writer.discard()
