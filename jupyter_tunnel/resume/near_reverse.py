"""Reverse forwards on the laptop side: listeners the helper holds on the target.

Part of ``NearEnd`` (see ``near``; the helper's side is ``helper_reverse``).
:meth:`ReverseNear.listen` asks the helper for a listener (LISTEN on the control link,
answered by BOUND) and waits for the port.  Each OFFER that follows is a connection the
helper accepted and holds: a worker thread connects to the forward's local target, then
the stream is attached with HELLO RESUME like any held stream (and resumes the same way
after an outage); a target that refuses gets the stream reset on both ends.  After a
reconnect every listener is asked for again on the same port (the same helper answers
at once; a helper started anew binds it again).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from .frames import Bound, Code, Frame, Listen, Offer
from .near_loop import Link, NearStream, rst, set_linger
from .near_streams import Streams
from .replay import Stream

log = logging.getLogger(__name__)

#: offers remembered, so that one repeated after a reconnect is not taken twice
SEEN_OFFERS = 4096
#: a local target must accept within this long
CONNECT_TIMEOUT = 10.0
#: a listener the helper lost (started anew, its port taken meanwhile) is asked for again
RELISTEN = 5.0


@dataclass(eq=False)
class _Listener:
    lid: int
    bind: str
    port: int  # asked for (0: any), then the bound one
    target: tuple[str, int]
    sent_on: Link | None = None
    retry_at: float = 0.0
    bound: bool = False
    error: str = ""
    done: threading.Event = field(default_factory=threading.Event)


class ReverseNear(Streams):
    """The reverse listeners of one near end."""

    _lock: threading.Lock

    def _reverse_setup(self) -> None:
        self._listeners: dict[int, _Listener] = {}
        self._next_lid = 1
        self._seen: OrderedDict[int, None] = OrderedDict()
        self._offered: list[tuple[int, socket.socket | OSError]] = []

    # --- any thread -----------------------------------------------------------------

    def listen(self, bind: str, port: int, host: str, host_port: int,
               timeout: float = 30.0) -> int:
        """Have the helper listen on ``bind:port`` on the target (0: a free port) and carry
        each connection to ``host:host_port`` here; the port bound.  OSError if it cannot
        (the port is taken there, the helper is not reached in ``timeout``)."""
        with self._lock:
            lid, self._next_lid = self._next_lid, self._next_lid + 1
            entry = _Listener(lid, bind, port, (host, host_port))
            self._listeners[lid] = entry
        self._wake()
        answered = entry.done.wait(timeout)
        with self._lock:
            if not answered or not entry.bound:
                self._listeners.pop(lid, None)
        if not answered:
            raise TimeoutError(f"the resume helper did not answer for {bind}:{port} within "
                               f"{timeout:g}s")
        if not entry.bound:
            raise OSError(entry.error)
        return entry.port

    def _connect_local(self, sid: int, target: tuple[str, int]) -> None:
        try:
            result: socket.socket | OSError = socket.create_connection(
                target, timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            result = exc
        with self._lock:
            self._offered.append((sid, result))
        self._wake()

    # --- the loop -------------------------------------------------------------------

    def _reverse_control(self, link: Link, frame: Frame) -> bool:
        """BOUND and OFFER on the control link; False for other frames."""
        if isinstance(frame, Bound):
            with self._lock:
                entry = self._listeners.get(frame.listen_id)
            if entry is not None:
                if frame.port:
                    entry.port, entry.bound, entry.error = frame.port, True, ""
                else:
                    entry.error = frame.reason or "the helper could not listen"
                    if entry.bound:  # a helper started anew could not bind it: ask again
                        log.warning("resume: reverse forward %s:%d is gone: %s; asking "
                                    "again in %gs", entry.bind, entry.port, entry.error,
                                    RELISTEN)
                        entry.sent_on, entry.retry_at = None, time.monotonic() + RELISTEN
                entry.done.set()
            return True
        if isinstance(frame, Offer):
            if frame.stream_id in self._seen or frame.stream_id in self._streams:
                return True
            self._seen[frame.stream_id] = None
            while len(self._seen) > SEEN_OFFERS:
                self._seen.popitem(last=False)
            with self._lock:
                entry = self._listeners.get(frame.listen_id)
            if entry is None:  # not ours (any more): the helper must let it go
                self._doom(frame.stream_id, "no such reverse forward here")
                return True
            threading.Thread(target=self._connect_local, args=(frame.stream_id, entry.target),
                             daemon=True, name="jupyter-tunnel-reverse").start()
            return True
        return False

    def _reverse_tick(self, now: float) -> None:
        with self._lock:
            offered, self._offered = self._offered, []
            listeners = list(self._listeners.values())
        for sid, result in offered:
            if isinstance(result, OSError):
                self._doom(sid, f"local target: {result.strerror or result}")
            else:
                self._attach_offer(sid, result, now)
        control = self._control
        if control is None or not control.welcomed:
            return
        for entry in listeners:
            if entry.sent_on is not control and now >= entry.retry_at:
                entry.sent_on = control
                control.send(Listen(entry.lid, entry.port, entry.bind))
        self._flush(control)

    def _doom(self, sid: int, reason: str) -> None:
        """Reset an offered stream the helper holds (RESUME, then RESET, on a link)."""
        self._doomed[("reset", sid)] = (0, Code.CONNECT, reason, time.monotonic())

    def _attach_offer(self, sid: int, sock: socket.socket, now: float) -> None:
        try:
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            sock.close()
            self._doom(sid, f"local target: {exc}")
            return
        set_linger(sock, True)
        st = NearStream(Stream(sid, self.settings.stream_limit, self._budget), "reverse",
                        sock, now)
        st.fresh, st.offered, st.news = False, True, 1  # the helper holds it: RESUME
        self._streams[sid] = st
        self.adopted += 1

    def _reverse_close(self) -> None:
        with self._lock:
            listeners = list(self._listeners.values())
            offered, self._offered = self._offered, []
        for entry in listeners:
            entry.error = entry.error or "the tunnel is closing"
            entry.done.set()
        for _, result in offered:
            if isinstance(result, socket.socket):
                rst(result)
