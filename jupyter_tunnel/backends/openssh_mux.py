"""The part of OpenSSH's ControlMaster protocol (``PROTOCOL.mux``) that the OpenSSH backend
speaks itself: hello, and a "stdio forward" per forwarded connection.

For each connection accepted on a local listener, a control connection asks the master
for a channel to ``host:port`` (``MUX_C_NEW_STDIO_FWD``, what ``ssh -W`` asks for) and hands
it the accepted socket, as input and output, over ``SCM_RIGHTS``.  From then on the master
moves the bytes itself, exactly as for ``ssh -L``: none of them pass through Python.  The
control connection stays open for as long as the forward lives (closing it ends the
channel); the master closes it when the channel has ended.

An idle control connection is also how a tunnel holds on to a shared master: a master
started with ``ControlPersist`` stays up while any is open, and its end is seen at once as
the end of that connection.
"""

from __future__ import annotations

import contextlib
import socket
import struct

HELLO = 0x00000001
C_NEW_STDIO_FWD = 0x10000008
S_OK = 0x80000001
S_PERMISSION_DENIED = 0x80000002
S_FAILURE = 0x80000003
S_SESSION_OPENED = 0x80000006
VERSION = 4

# struct tcp_info (linux/tcp.h), one snapshot: tcpi_state at 0, tcpi_bytes_received (u64) at
# 128 (Linux 4.1), tcpi_notsent_bytes (u32) at 144, tcpi_bytes_sent and tcpi_bytes_retrans
# (u64) at 200 and 208 (Linux 4.19)
_TCP_INFO_SIZE = 216
_PEER_CLOSED = {8, 9, 11}  # CLOSE_WAIT, LAST_ACK, CLOSING: the client's FIN counted in


class MuxError(Exception):
    """The master said no, or spoke something unexpected."""


def _u32(n: int) -> bytes:
    return struct.pack(">I", n)


def _string(data: bytes) -> bytes:
    return _u32(len(data)) + data


def _packet(*parts: bytes) -> bytes:
    body = b"".join(parts)
    return _u32(len(body)) + body


HELLO_PACKET = _packet(_u32(HELLO), _u32(VERSION))


class Messages:
    """Splits what a master sends on a control connection into (type, body) messages."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add received bytes; return the messages now complete."""
        self._buf += data
        out: list[tuple[int, bytes]] = []
        while len(self._buf) >= 8:
            (length,) = struct.unpack_from(">I", self._buf)
            if length < 4 or length > 1 << 20:
                raise MuxError(f"malformed control message (length {length})")
            if len(self._buf) < 4 + length:
                break
            (kind,) = struct.unpack_from(">I", self._buf, 4)
            out.append((kind, bytes(self._buf[8:4 + length])))
            del self._buf[:4 + length]
        return out


def reason(body: bytes) -> str:
    """The text of a ``MUX_S_FAILURE`` or ``MUX_S_PERMISSION_DENIED`` (after the request id)."""
    try:
        (length,) = struct.unpack_from(">I", body, 4)
        return body[8:8 + length].decode(errors="replace")
    except struct.error:
        return "no reason given"


def connect(path: str, timeout: float = 5.0) -> socket.socket:
    """A control connection to the master at ``path`` (raises OSError when none listens)."""
    ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ctl.settimeout(timeout)
        ctl.connect(path)
    except BaseException:
        ctl.close()
        raise
    return ctl


def anchor(path: str, timeout: float = 5.0) -> socket.socket:
    """An idle control connection, hello exchanged: it keeps a ``ControlPersist`` master up,
    and its end (EOF) is the master's end."""
    ctl = connect(path, timeout)
    try:
        ctl.sendall(HELLO_PACKET)
        messages = Messages()
        got: list[tuple[int, bytes]] = []
        while not got:
            data = ctl.recv(4096)
            if not data:
                raise MuxError("the master closed the control connection")
            got = messages.feed(data)
        kind, body = got[0]
        if kind != HELLO or len(body) < 4 or struct.unpack_from(">I", body)[0] != VERSION:
            raise MuxError(f"unexpected control protocol (message {kind:#x})")
    except BaseException:
        ctl.close()
        raise
    ctl.setblocking(False)
    return ctl


def start_stdio_forward(path: str, conn: socket.socket, host: str, port: int,
                        request_id: int = 1) -> socket.socket:
    """Ask the master at ``path`` to carry ``conn`` to ``host:port`` as its last hop sees it.

    Returns the control connection, non-blocking: its first messages are the master's hello
    and then ``MUX_S_SESSION_OPENED`` (or a failure); its end is the forward's end.
    """
    ctl = connect(path)
    try:
        ctl.sendall(HELLO_PACKET + _packet(
            _u32(C_NEW_STDIO_FWD), _u32(request_id), _string(b""), _string(host.encode()),
            _u32(port)))
        # the master reads messages to their exact length, then one byte with each fd
        for _ in range(2):
            socket.send_fds(ctl, [b"\0"], [conn.fileno()])
    except BaseException:
        ctl.close()
        raise
    ctl.setblocking(False)
    return ctl


def tcp_bytes(sock: socket.socket) -> tuple[int, int]:
    """Bytes written to a local TCP connection (sent or still queued) and received from
    it, as the kernel counts them in one snapshot; (0, 0) where it does not tell."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_SIZE)
    except (OSError, AttributeError):
        return 0, 0
    if len(info) < _TCP_INFO_SIZE:
        return 0, 0
    (received,) = struct.unpack_from("=Q", info, 128)
    (notsent,) = struct.unpack_from("=I", info, 144)
    sent, retransmitted = struct.unpack_from("=QQ", info, 200)
    if info[0] in _PEER_CLOSED and received:
        received -= 1  # the FIN takes a sequence number too
    return sent - retransmitted + notsent, received


def close_quietly(*socks: socket.socket | None) -> None:
    """Close sockets, ignoring errors."""
    for sock in socks:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
