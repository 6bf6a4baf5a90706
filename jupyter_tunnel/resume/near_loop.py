"""The laptop side's event loop, its links to the helper and the thread that connects them.

The stream logic is in ``near`` (``NearEnd``).  One daemon thread runs a ``selectors``
loop over non-blocking sockets: each round sends the ACKs that came due, dispatches the
ready sockets, then ``_tick`` takes what other threads handed over (adopted sockets,
finished link connects, a poke, close), checks the timers and sets every socket's
interest from the state.
``connect_link`` may block (an SSH channel open), so ``Connector`` calls it in worker
threads; their results reach the loop through its wake socket.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .frames import Ack, Frame, FrameDecoder, Mode
from .replay import Budget, Stream

log = logging.getLogger(__name__)

READ_SIZE = 256 * 1024
#: stop reading a local socket while its link has this much not yet sent, and a link
#: while its local socket has this much not yet written
HIGH_WATER = 512 * 1024
#: link connects under way at once
MAX_CONNECTS = 8
#: a closing link that does not take its last frames is dropped after this long
CLOSE_GRACE = 5.0

#: the Connector's key for the control link
CONTROL = "control"

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)
_CLEAN_CLOSE = struct.pack("ii", 0, 0)


@dataclass(frozen=True)
class NearSettings:
    """Limits in bytes, times in seconds.

    ``stream_limit`` must not exceed the helper's (it acknowledges only what its target
    took, so a larger one lets the helper overflow); ``keepalive`` is the control
    channel's ACK interval (a link silent for three times that is dropped); link retries
    wait ``retry_first`` seconds, doubling up to ``retry_max``.
    """

    stream_limit: int = 16 * 2**20
    tunnel_limit: int = 256 * 2**20
    outage: float = 900.0
    keepalive: float = 10.0
    retry_first: float = 0.2
    retry_max: float = 2.0

    def __post_init__(self) -> None:
        if self.stream_limit <= 0 or self.tunnel_limit <= 0:
            raise ValueError("stream_limit and tunnel_limit must be positive")
        if self.outage < 0 or self.keepalive <= 0:
            raise ValueError("outage must be >= 0 and keepalive > 0")
        if not 0 < self.retry_first <= self.retry_max:
            raise ValueError("need 0 < retry_first <= retry_max")


def set_linger(sock: socket.socket, reset: bool) -> None:
    """Make ``close()`` send a RST (``reset``) or a normal FIN; TCP sockets only."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            opt = _RESET_ON_CLOSE if reset else _CLEAN_CLOSE
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, opt)


def rst(sock: socket.socket) -> None:
    """Close with a reset, never a clean FIN: an incomplete stream must not look complete."""
    set_linger(sock, True)
    sock.close()


class Link:
    """One connection to the helper's Unix socket: the control channel or a stream's."""

    def __init__(self, sock: socket.socket, owner: Any, mode: Mode) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.owner = owner  # the NearStream it carries; None for the control channel
        self.mode = mode  # what its HELLO asked for
        self.decoder = FrameDecoder()
        self.out = bytearray()
        self.welcomed = False
        self.closing_at: float | None = None  # closed once ``out`` is sent
        self.heard = time.monotonic()  # when the helper last sent something

    def send(self, frame: Frame) -> None:
        if self.closing_at is None:
            self.out += frame.encode()


class NearStream:
    """One adopted local connection and its stream."""

    def __init__(self, stream: Stream, target: str, local: socket.socket, now: float) -> None:
        self.stream = stream
        stream.hold(now)  # held until the helper welcomes it
        self.target = target
        self.local: socket.socket | None = local
        self.to_local = bytearray()
        self.local_eof = False  # the local client's EOF was read
        self.local_shut = False  # the helper's EOF was passed on (SHUT_WR)
        self.link: Link | None = None
        self.attached = False  # frames go on ``link`` as they are made
        self.fresh = True  # no NEW reached the helper as far as we know: say NEW, not RESUME
        self.opened = False  # the helper welcomed it once
        self.news = 0  # HELLO NEWs sent
        self.offered = False  # a reverse forward's: the helper started it (near_reverse)


Result = tuple[object, "socket.socket | OSError"]


class Connector:
    """Calls ``connect_link`` in worker threads, as it may block; the loop takes results."""

    def __init__(self, connect_link: Callable[[], socket.socket],
                 wake: Callable[[], None]) -> None:
        self._connect = connect_link
        self._wake = wake
        self._lock = threading.Lock()
        self._results: list[Result] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.pending: set[object] = set()  # loop thread only: keys being connected

    def start(self, key: object) -> None:
        """Connect a link for ``key`` (the control sentinel or a stream)."""
        thread = threading.Thread(target=self._run, args=(key,), daemon=True,
                                  name="jupyter-tunnel-near-link")
        with self._lock:
            if self._closed:
                return
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        self.pending.add(key)
        thread.start()

    def _run(self, key: object) -> None:
        result: socket.socket | OSError
        try:
            result = self._connect()
        except OSError as exc:
            result = exc
        except Exception as exc:  # not the OSError promised: still one failed attempt
            log.warning("resume: connect_link raised %r", exc)
            result = OSError(f"connecting a link failed: {exc!r}")
        with self._lock:
            keep = not self._closed
            if keep:
                self._results.append((key, result))
        if keep:
            self._wake()
        elif isinstance(result, socket.socket):
            result.close()

    def results(self) -> list[Result]:
        """The connects finished since the last call."""
        with self._lock:
            done, self._results = self._results, []
        for key, _ in done:
            self.pending.discard(key)
        return done

    def close(self, deadline: float) -> None:
        """No more connects; close links that arrive late; wait for the workers."""
        with self._lock:
            self._closed = True
            done, self._results = self._results, []
            threads = list(self._threads)
        for _, result in done:
            if isinstance(result, socket.socket):
                result.close()
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))


class Loop:
    """The selectors loop of the laptop side: sockets, interests, the loop thread."""

    def __init__(self, settings: NearSettings, connect_link: Callable[[], socket.socket]
                 ) -> None:
        self.settings = settings
        self._connector = Connector(connect_link, self._wake)
        self._budget = Budget(settings.tunnel_limit)
        self._streams: dict[int, NearStream] = {}
        self._links: set[Link] = set()
        self._control: Link | None = None
        self._delay = settings.retry_first
        self._next_try = 0.0
        self._down_since: float | None = None  # wall clock
        self._next_ping = 0.0
        self._pings = 0
        #: streams reset here while unlinked, whose RESET the helper has yet to hear:
        #: key ("reset", id) -> (count received, code, reason, since)
        self._doomed: dict[tuple[str, int], tuple[int, int, str, float]] = {}
        self._sel = selectors.DefaultSelector()
        self._events: dict[socket.socket, int] = {}
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._thread: threading.Thread | None = None

    def _wake(self) -> None:
        """Make the loop run a round now (any thread)."""
        with contextlib.suppress(OSError):  # full (a round is due anyway) or closed
            self._wake_w.send(b"\0")

    def _run(self) -> None:
        self._set(self._wake_r, _READ, ("wake", None))
        try:
            while True:
                ack_at = self._send_due_acks(time.monotonic())
                if self._tick(time.monotonic()):
                    break
                now = time.monotonic()
                wait = self._timeout(now)
                if ack_at is not None:
                    wait = max(0.0, min(wait, ack_at - now))
                for key, mask in self._sel.select(wait):
                    kind, obj = key.data
                    try:
                        self._dispatch(kind, obj, mask)
                    except Exception as exc:  # a bug must cost one stream, not the tunnel
                        log.exception("resume: unexpected error on a %s socket", kind)
                        self._fault(kind, obj, exc)
        finally:
            self._shutdown()  # even after a bug: local clients must see resets, not EOFs

    def _drain_wake(self) -> None:
        while True:
            try:
                if not self._wake_r.recv(512):
                    return
            except OSError:
                return

    def _set(self, sock: socket.socket, events: int, data: Any = None) -> None:
        old = self._events.get(sock, 0)
        if events == old:
            return
        if sock.fileno() < 0:  # closed meanwhile
            self._forget_sock(sock)
            return
        if not events:
            self._sel.unregister(sock)
            del self._events[sock]
        elif not old:
            self._sel.register(sock, events, data)
            self._events[sock] = events
        else:
            self._sel.modify(sock, events, self._sel.get_key(sock).data)
            self._events[sock] = events

    def _forget_sock(self, sock: socket.socket) -> None:
        if sock in self._events:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(sock)
            del self._events[sock]

    def _close_loop(self) -> None:
        for sock in list(self._events):
            self._forget_sock(sock)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    # --- links ----------------------------------------------------------------------------

    def _dispatch(self, kind: str, obj: Any, mask: int) -> None:
        if kind == "wake":
            self._drain_wake()
        elif kind == "link":
            if mask & _WRITE:
                self._flush(obj)
            if mask & _READ and obj in self._links:
                self._link_read(obj)
        elif kind == "local":
            if mask & _WRITE:
                self._local_write(obj)
            if mask & _READ and obj.local is not None:
                self._local_read(obj)

    def _dial(self, now: float) -> None:
        if now < self._next_try:
            return
        pending = self._connector.pending
        wanted: list[object] = []
        if self._control is None and CONTROL not in pending:
            wanted.append(CONTROL)
        wanted += [st for st in self._streams.values()
                   if st.link is None and not st.stream.done and st not in pending]
        wanted += [key for key in self._doomed if key not in pending]
        for key in wanted:
            if len(pending) >= MAX_CONNECTS:
                break
            self._connector.start(key)

    def _failed(self, now: float, why: str) -> None:
        """A link could not be had: retry after the backoff."""
        if now >= self._next_try:  # one step per round of attempts, not per attempt
            self._next_try = now + self._delay
            self._delay = min(2 * self._delay, self.settings.retry_max)
        if self._down_since is None:
            self._down_since = time.time()
        log.debug("resume: no link (%s); next try in %.1fs", why, self._next_try - now)

    def _keepalive(self, now: float) -> None:
        control = self._control
        if control is None:
            return
        if now - control.heard > 3 * self.settings.keepalive:
            log.info("resume: no keepalive echo for %.1fs: dropping every link",
                     now - control.heard)
            for link in list(self._links):
                self._lost(link)  # the control link's loss counts as a failed attempt
            self._next_try = now
            return
        if control.welcomed and now >= self._next_ping:
            self._pings += 1
            control.send(Ack(self._pings))
            self._next_ping = now + self.settings.keepalive
            self._flush(control)

    def _send_due_acks(self, now: float) -> float | None:
        """Send the ACKs that waited ACK_DELAY for DATA to ride with; return when the next
        one is due (None: none is waiting)."""
        first: float | None = None
        for st in self._streams.values():
            link, reader = st.link, st.stream.reader
            if link is None or not st.attached or (at := reader.ack_at) is None:
                continue
            if reader.ack_wanted(now):
                link.send(Ack(reader.take_count()))
                self._flush(link)
            elif first is None or at < first:
                first = at
        return first

    def _flush(self, link: Link) -> None:
        if not link.out:
            return
        try:
            n = link.sock.send(link.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            link.out.clear()
            self._lost(link)
            return
        del link.out[:n]

    def _lost(self, link: Link) -> None:
        """A link ended: its stream is held for a resume."""
        now = time.monotonic()
        self._drop_link(link)
        if link is self._control:
            self._control = None
            if link.welcomed and self._down_since is None:
                self._down_since = time.time()
        st = link.owner
        if st is not None and st.link is link:
            st.link, st.attached = None, False
            if not st.stream.done:  # else it only has bytes left to write locally
                st.stream.hold(now)
        if not link.welcomed and link.closing_at is None:
            self._failed(now, "the link closed before WELCOME")

    def _drop_link(self, link: Link) -> None:
        self._forget_sock(link.sock)
        link.sock.close()
        self._links.discard(link)

    def _let_go(self, link: Link) -> None:
        """Send what is queued, then close the link."""
        st = link.owner
        if st is not None and st.link is link:
            st.link, st.attached = None, False
        link.closing_at = time.monotonic()
        self._flush(link)

    # --- what the stream logic provides (near_streams, near) ------------------------------

    def _tick(self, now: float) -> bool:
        """One round's work after the ready sockets; True ends the loop."""
        raise NotImplementedError

    def _timeout(self, now: float) -> float:
        raise NotImplementedError

    def _link_read(self, link: Link) -> None:
        raise NotImplementedError

    def _local_read(self, st: NearStream) -> None:
        raise NotImplementedError

    def _local_write(self, st: NearStream) -> None:
        raise NotImplementedError

    def _fault(self, kind: str, obj: Any, exc: Exception) -> None:
        raise NotImplementedError

    def _shutdown(self) -> None:
        raise NotImplementedError
