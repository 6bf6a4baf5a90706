"""Wire format of resumable streams, between the laptop side and the remote helper.

Stdlib only, no import from jupyter_tunnel, and Python 3.8 syntax at runtime: this
source is embedded verbatim in the helper program sent over SSH to the last hop.

Every frame is ``type (u8) | body length (u32) | body``, big endian.  One stream
travels on one channel (a connection to the helper's Unix socket); it starts with
HELLO from the laptop, answered by WELCOME or REFUSE, then DATA, ACK, EOF and RESET
flow both ways.  A HELLO of another version raises VersionError whatever its layout.

Positions count the bytes of one direction from 0; the EOF takes one more position,
like TCP's FIN, so that it can be acknowledged.  ``received`` (in HELLO, WELCOME and
ACK) is always that cumulative count: the next position the receiver expects.
"""

from __future__ import annotations

import enum
import hmac
import struct
from dataclasses import dataclass
from typing import ClassVar

VERSION = 1
#: largest DATA payload; a writer cuts its bytes into frames of at most this size
MAX_PAYLOAD = 64 * 1024
MAX_SECRET = 64
MAX_TARGET = 1024
MAX_REASON = 200
MAX_POSITION = 2**64 - 1

_HEADER = struct.Struct(">BI")
_U64 = struct.Struct(">Q")
_HELLO = struct.Struct(">HBQQB")  # version, mode, stream id, received, secret length
_U16 = struct.Struct(">H")
_CODE = struct.Struct(">BB")  # code, reason length


class ProtocolError(ValueError):
    """The peer broke the protocol: the stream must be reset (code PROTOCOL)."""


class FrameError(ProtocolError):
    """Bytes that are not a valid frame: unknown type, bad or oversized length, bad body."""


class VersionError(FrameError):
    """A HELLO of another protocol version: answer REFUSE with code VERSION."""

    def __init__(self, version: int) -> None:
        super().__init__(f"protocol version {version}, this side speaks {VERSION}")
        self.version = version


class Code(enum.IntEnum):
    """Why a stream is refused (REFUSE) or ended by a reset (RESET)."""

    PROTOCOL = 1  # malformed frame or a frame that breaks the stream's state
    VERSION = 2  # HELLO's version is not spoken here
    SECRET = 3  # wrong tunnel secret
    UNKNOWN_STREAM = 4  # RESUME of a stream the helper does not hold (any more)
    STREAM_EXISTS = 5  # NEW with an id already in use
    CONNECT = 6  # the helper could not connect to the target
    OVERFLOW = 7  # a stream or tunnel buffer limit was exceeded
    OUTAGE = 8  # the outage outlasted its limit
    PEER_RESET = 9  # the application's connection was reset or failed
    SHUTDOWN = 10  # the tunnel or helper is closing
    BAD_RESUME = 11  # a received count outside what the other side can replay


class Mode(enum.IntEnum):
    """What a HELLO asks for."""

    NEW = 0  # connect to ``target`` and start a stream
    RESUME = 1  # reattach to a stream the helper holds


class Frame:
    """Base of all frames; ``TYPE`` is the type byte, ``MAX_BODY`` bounds the body."""

    # Subclasses set these without annotations: a dataclass must not take them for fields
    # (Python 3.8 recognises a string ClassVar annotation only in an importable module).
    TYPE: ClassVar[int] = 0
    MAX_BODY: ClassVar[int] = 0

    def body(self) -> bytes:
        raise NotImplementedError

    def encode(self) -> bytes:
        """The frame's bytes on the wire."""
        body = self.body()
        return _HEADER.pack(self.TYPE, len(body)) + body

    @classmethod
    def parse(cls, body: bytes) -> Frame:
        raise NotImplementedError


def _position(value: int, what: str) -> int:
    if not 0 <= value <= MAX_POSITION:
        raise FrameError(f"{what} out of range: {value!r}")
    return value


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FrameError(f"{what} is not UTF-8") from None


@dataclass(frozen=True)
class Hello(Frame):
    """Laptop to helper, first frame of a channel: open (NEW) or reattach (RESUME) a stream.

    ``received`` is what the laptop has received of the stream (0 for NEW); ``target`` is
    ``host:port`` or an absolute Unix socket path for NEW, empty for RESUME.
    """

    version: int
    mode: Mode
    stream_id: int
    received: int
    secret: bytes
    target: str = ""

    TYPE = 1
    MAX_BODY = _HELLO.size + MAX_SECRET + _U16.size + MAX_TARGET

    def body(self) -> bytes:
        target = self.target.encode("utf-8")
        if not 0 < len(self.secret) <= MAX_SECRET or len(target) > MAX_TARGET:
            raise ValueError("secret or target of a wrong size")
        return (
            _HELLO.pack(self.version, self.mode, self.stream_id, self.received, len(self.secret))
            + self.secret
            + _U16.pack(len(target))
            + target
        )

    @classmethod
    def parse(cls, body: bytes) -> Hello:
        # the version comes first and stays there in every version, so that a helper
        # left running by an older release can still answer "wrong version"
        if len(body) >= _U16.size and _U16.unpack_from(body)[0] != VERSION:
            raise VersionError(_U16.unpack_from(body)[0])
        if len(body) < _HELLO.size:
            raise FrameError("HELLO too short")
        version, mode, stream_id, received, n = _HELLO.unpack_from(body)
        end = _HELLO.size + n
        if not 0 < n <= MAX_SECRET or len(body) < end + _U16.size:
            raise FrameError("HELLO secret of a wrong size")
        (t,) = _U16.unpack_from(body, end)
        if t > MAX_TARGET or len(body) != end + _U16.size + t:
            raise FrameError("HELLO target of a wrong size")
        try:
            mode = Mode(mode)
        except ValueError:
            raise FrameError(f"HELLO mode unknown: {mode}") from None
        target = _text(body[end + _U16.size :], "HELLO target")
        if (mode == Mode.NEW) != bool(target) or (mode == Mode.NEW and received):
            raise FrameError("HELLO: NEW needs a target and nothing received, RESUME no target")
        return cls(version, mode, stream_id, received, bytes(body[_HELLO.size : end]), target)


@dataclass(frozen=True)
class Welcome(Frame):
    """Helper to laptop: the stream is attached; ``received`` is what the helper has."""

    received: int

    TYPE = 2
    MAX_BODY = _U64.size

    def body(self) -> bytes:
        return _U64.pack(self.received)

    @classmethod
    def parse(cls, body: bytes) -> Welcome:
        if len(body) != _U64.size:
            raise FrameError("WELCOME of a wrong size")
        return cls(_U64.unpack(body)[0])


@dataclass(frozen=True)
class _Coded(Frame):
    code: int
    reason: str = ""

    MAX_BODY = _CODE.size + MAX_REASON

    def body(self) -> bytes:
        reason = self.reason.encode("utf-8")[:MAX_REASON]
        return _CODE.pack(self.code, len(reason)) + reason

    @classmethod
    def parse(cls, body: bytes) -> Frame:
        if len(body) < _CODE.size:
            raise FrameError("frame too short for a code")
        code, n = _CODE.unpack_from(body)
        if len(body) != _CODE.size + n:
            raise FrameError("reason of a wrong size")
        # a reason cut inside a character by body() must not make the frame invalid
        return cls(code, body[_CODE.size :].decode("utf-8", "replace"))


@dataclass(frozen=True)
class Refuse(_Coded):
    """Helper to laptop, instead of WELCOME: the stream cannot be opened or resumed."""

    TYPE = 3


@dataclass(frozen=True)
class Reset(_Coded):
    """Either way: the stream is over and not complete; both ends reset their connection."""

    TYPE = 7


@dataclass(frozen=True)
class Data(Frame):
    """Either way: ``payload`` starts at position ``offset`` of the sender's bytes."""

    offset: int
    payload: bytes

    TYPE = 4
    MAX_BODY = _U64.size + MAX_PAYLOAD

    def body(self) -> bytes:
        if not 0 < len(self.payload) <= MAX_PAYLOAD:
            raise ValueError("DATA payload of a wrong size")
        return _U64.pack(self.offset) + self.payload

    @classmethod
    def parse(cls, body: bytes) -> Data:
        if len(body) <= _U64.size:
            raise FrameError("DATA without payload")
        (offset,) = _U64.unpack_from(body)
        payload = body[_U64.size :]
        _position(offset + len(payload), "DATA end")
        return cls(offset, payload)


@dataclass(frozen=True)
class Ack(Frame):
    """Either way: the sender has received positions ``[0, received)``."""

    received: int

    TYPE = 5
    MAX_BODY = _U64.size

    def body(self) -> bytes:
        return _U64.pack(self.received)

    @classmethod
    def parse(cls, body: bytes) -> Ack:
        if len(body) != _U64.size:
            raise FrameError("ACK of a wrong size")
        return cls(_U64.unpack(body)[0])


@dataclass(frozen=True)
class Eof(Frame):
    """Either way: half-close; ``offset`` is the sender's total byte count (its EOF position)."""

    offset: int

    TYPE = 6
    MAX_BODY = _U64.size

    def body(self) -> bytes:
        return _U64.pack(self.offset)

    @classmethod
    def parse(cls, body: bytes) -> Eof:
        if len(body) != _U64.size:
            raise FrameError("EOF of a wrong size")
        return cls(_U64.unpack(body)[0])


#: a reverse listener's id, port and bind address; a stream the helper starts
_LISTEN = struct.Struct(">IHB")  # listen id, port, bind length
_BOUND = struct.Struct(">IHBB")  # listen id, port (0: not bound), code, reason length
_OFFER = struct.Struct(">IQ")  # listen id, stream id
MAX_BIND = 255
#: stream ids the helper gives (reverse streams) start here; the laptop's stay below
HELPER_IDS = 2**62


@dataclass(frozen=True)
class Listen(Frame):
    """Laptop to helper, on the control channel: listen on ``bind:port`` (0: any free
    port) for a reverse forward ``listen_id``; answered by BOUND.  Asking again for a
    listener that exists answers BOUND again (after a reconnect)."""

    listen_id: int
    port: int
    bind: str = "127.0.0.1"

    TYPE = 8
    MAX_BODY = _LISTEN.size + MAX_BIND

    def body(self) -> bytes:
        bind = self.bind.encode("utf-8")
        if not bind or len(bind) > MAX_BIND or not 0 <= self.port < 65536:
            raise ValueError("LISTEN bind or port of a wrong size")
        return _LISTEN.pack(self.listen_id, self.port, len(bind)) + bind

    @classmethod
    def parse(cls, body: bytes) -> Listen:
        if len(body) < _LISTEN.size:
            raise FrameError("LISTEN too short")
        listen_id, port, n = _LISTEN.unpack_from(body)
        if not n or len(body) != _LISTEN.size + n:
            raise FrameError("LISTEN bind of a wrong size")
        return cls(listen_id, port, _text(body[_LISTEN.size :], "LISTEN bind"))


@dataclass(frozen=True)
class Bound(Frame):
    """Helper to laptop, on the control channel: listener ``listen_id`` listens on
    ``port``; or (port 0) it could not, ``code`` and ``reason`` say why."""

    listen_id: int
    port: int
    code: int = 0
    reason: str = ""

    TYPE = 9
    MAX_BODY = _BOUND.size + MAX_REASON

    def body(self) -> bytes:
        reason = self.reason.encode("utf-8")[:MAX_REASON]
        return _BOUND.pack(self.listen_id, self.port, self.code, len(reason)) + reason

    @classmethod
    def parse(cls, body: bytes) -> Bound:
        if len(body) < _BOUND.size:
            raise FrameError("BOUND too short")
        listen_id, port, code, n = _BOUND.unpack_from(body)
        if len(body) != _BOUND.size + n:
            raise FrameError("BOUND reason of a wrong size")
        # cut at MAX_REASON bytes by the sender, perhaps inside a character
        return cls(listen_id, port, code, body[_BOUND.size :].decode("utf-8", "replace"))


@dataclass(frozen=True)
class Offer(Frame):
    """Helper to laptop, on the control channel: listener ``listen_id`` accepted a
    connection, held as stream ``stream_id`` (at least HELPER_IDS); the laptop connects
    its end and attaches with HELLO RESUME, or resets it."""

    listen_id: int
    stream_id: int

    TYPE = 10
    MAX_BODY = _OFFER.size

    def body(self) -> bytes:
        return _OFFER.pack(self.listen_id, self.stream_id)

    @classmethod
    def parse(cls, body: bytes) -> Offer:
        if len(body) != _OFFER.size:
            raise FrameError("OFFER of a wrong size")
        listen_id, stream_id = _OFFER.unpack(body)
        if stream_id < HELPER_IDS:
            raise FrameError(f"OFFER of stream {stream_id}, below the helper's ids")
        return cls(listen_id, stream_id)


FRAME_TYPES = {cls.TYPE: cls for cls in (Hello, Welcome, Refuse, Data, Ack, Eof, Reset,
                                         Listen, Bound, Offer)}
#: no frame is longer than this: a decoder never buffers more than one frame of it
MAX_FRAME = _HEADER.size + max(cls.MAX_BODY for cls in FRAME_TYPES.values())


class FrameDecoder:
    """Turns byte chunks of any size into frames; memory stays under one frame (MAX_FRAME).

    After a FrameError the decoder is broken for good: the stream must be reset.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._error: FrameError | None = None

    @property
    def pending(self) -> int:
        """Bytes held of a frame not complete yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes; return the frames they complete, in order."""
        if self._error is not None:
            raise self._error
        frames = []
        buf = self._buf
        pos = 0
        view = memoryview(data)
        while True:
            if len(buf) < _HEADER.size:
                take = min(_HEADER.size - len(buf), len(view) - pos)
                buf += view[pos : pos + take]
                pos += take
                if len(buf) < _HEADER.size:
                    break
                self._check_header(buf)
            kind, length = _HEADER.unpack_from(buf)
            take = min(_HEADER.size + length - len(buf), len(view) - pos)
            buf += view[pos : pos + take]
            pos += take
            if len(buf) < _HEADER.size + length:
                break
            try:
                with memoryview(buf) as whole:  # one copy of the body, not two
                    body = bytes(whole[_HEADER.size :])
                frames.append(FRAME_TYPES[kind].parse(body))
            except FrameError as exc:
                self._error = exc
                raise
            del buf[:]
            if pos == len(view):
                break
        return frames

    def _check_header(self, buf: bytearray) -> None:
        kind, length = _HEADER.unpack_from(buf)
        cls = FRAME_TYPES.get(kind)
        if cls is None:
            self._error = FrameError(f"unknown frame type {kind}")
        elif length > cls.MAX_BODY:
            name = cls.__name__.upper()
            self._error = FrameError(f"{name} frame of {length} bytes, at most {cls.MAX_BODY}")
        if self._error is not None:
            raise self._error

    def finish(self) -> None:
        """The channel ended: raise FrameError if it stopped inside a frame."""
        if self._error is not None:
            raise self._error
        if self._buf:
            raise FrameError(f"channel ended inside a frame ({len(self._buf)} bytes pending)")


def secret_ok(expected: bytes, given: bytes) -> bool:
    """Compare tunnel secrets in constant time."""
    return hmac.compare_digest(expected, given)


def split_target(target: str) -> tuple[str, int] | str:
    """``host:port`` (``[v6]:port`` too) as ``(host, port)``, or an absolute Unix path as is."""
    if target.startswith("/"):
        return target
    host, sep, port = target.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"target is neither host:port nor an absolute path: {target!r}")
    return host, int(port)
