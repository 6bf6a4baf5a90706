"""Reverse forwards in the remote helper: it listens on the target itself.

Embedded in the helper program after ``helper_loop`` and before ``helper_main``; stdlib
only, Python 3.8 syntax at runtime.

The laptop asks on its control channel: LISTEN(id, port, bind); the helper binds and
answers BOUND(id, port), or BOUND(id, 0, code, reason).  A connection the listener
accepts becomes a stream the helper holds from the start (its id from ``HELPER_IDS`` up):
what the client sends is kept as for any held stream, and OFFER(listen id, stream id)
goes out on every control channel until the laptop attaches it with HELLO RESUME (from
then on it is an ordinary stream, resumed the same way after an outage) or resets it.
The listeners outlive an outage: the port stays bound on the target, and a connection
made meanwhile waits, held, within the outage limit.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import time
from typing import Any

from .frames import HELPER_IDS, Bound, Code, Frame, Listen, Offer
from .helper_loop import _READ, Channel, Held, Loop
from .replay import Stream

_RESET_ON_CLOSE = struct.pack("ii", 1, 0)
#: listeners one helper keeps at most
MAX_LISTENERS = 64


class Reverse(Loop):
    """The helper's reverse listeners and the streams they start."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.rlisteners: dict[int, tuple[socket.socket, int]] = {}  # id -> socket, port
        # a helper started anew must not reuse the ids of one before it: the laptop
        # remembers offers it took
        self.next_sid = HELPER_IDS + (random.getrandbits(40) << 20)
        self.unclaimed: dict[int, int] = {}  # stream id -> listen id, offered, not attached

    def _reverse_frame(self, ch: Channel, frame: Frame) -> bool:
        """A LISTEN on a control channel; False for any other frame."""
        if not isinstance(frame, Listen):
            return False
        known = self.rlisteners.get(frame.listen_id)
        if known is not None:
            self._send(ch, Bound(frame.listen_id, known[1]))
            return True
        if len(self.rlisteners) >= MAX_LISTENERS:
            self._send(ch, Bound(frame.listen_id, 0, Code.OVERFLOW,
                                 f"at most {MAX_LISTENERS} reverse forwards"))
            return True
        family = socket.AF_INET6 if ":" in frame.bind else socket.AF_INET
        try:
            sock = socket.create_server((frame.bind, frame.port), family=family, backlog=64)
        except OSError as exc:  # its strerror names the address again: the errno's words
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            self._send(ch, Bound(frame.listen_id, 0, Code.CONNECT, why))
            return True
        sock.setblocking(False)
        port = sock.getsockname()[1]
        self.rlisteners[frame.listen_id] = (sock, port)
        self._set(sock, _READ, ("rlisten", frame.listen_id))
        self._send(ch, Bound(frame.listen_id, port))
        return True

    def _control_opened(self, ch: Channel) -> None:
        """A new control channel: offer it what no laptop has attached yet."""
        for sid, lid in list(self.unclaimed.items()):
            if sid in self.streams:
                ch.send(Offer(lid, sid))
            else:
                del self.unclaimed[sid]
        self._flush(ch)

    def _claimed(self, sid: int) -> None:
        self.unclaimed.pop(sid, None)

    def _dispatch(self, kind: str, obj: Any, mask: int) -> None:
        if kind == "rlisten":
            self._reverse_accept(obj)
        else:
            super()._dispatch(kind, obj, mask)

    def _reverse_accept(self, lid: int) -> None:
        entry = self.rlisteners.get(lid)
        if entry is None:
            return
        while True:
            try:
                conn, _ = entry[0].accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self.streams) >= 4096:
                conn.close()
                continue
            conn.setblocking(False)
            if conn.family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            sid, self.next_sid = self.next_sid, self.next_sid + 1
            stream = Stream(sid, self.settings.stream_limit, self.budget)
            stream.hold(time.monotonic())  # held until the laptop attaches it
            held = Held(stream, conn)
            held.connecting = False
            self.streams[sid] = held
            self.unclaimed[sid] = lid
            self._interest(held)
            for ch in self.channels:
                if ch.control and ch.closing_at is None:
                    ch.send(Offer(lid, sid))
                    self._flush(ch)

    def _close_listeners(self) -> None:
        for sock, _ in self.rlisteners.values():
            self._forget_sock(sock)
            sock.close()
        self.rlisteners.clear()
