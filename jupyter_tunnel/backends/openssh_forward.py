"""Local listeners of the OpenSSH backend, whose connections an ssh master carries.

One thread runs a selector over the listeners, the control connections of the forwarded
connections and the tunnel's hold on the master (its anchor).  A connection accepted
while a master is up is handed to it at once (:func:`openssh_mux.start_stdio_forward`);
one accepted while it is down waits, up to ``hold_timeout``, for the next master.  The
listeners belong to this process, so they stay bound while ssh is reconnected and can be
pointed elsewhere (``retarget``) without a moment of refused connections.

A connection the master stops carrying because the master ended (killed, its link lost,
the tunnel closed) is reset, never closed with a clean EOF: a cut download must not look
complete.  ssh tells us nothing when it ends a connection normally, so the end of a
connection's control connection counts as normal only once the master proved alive a
moment later (``GRACE``): our hold on it (its anchor) did not end.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import HopUnreachable, PortInUse
from ..peers import may_use
from . import openssh_mux as mux
from .base import Acceptor
from .counters import Counters

log = logging.getLogger("jupyter_tunnel")
#: connections handed to a master between two calls of ``on_busy``
BUSY = 256
#: seconds the master must outlive a connection's end for that end to count as normal
GRACE = 0.1
_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass
class Route:
    """Where a listener's connections go, as the last hop sees it (may change)."""

    host: str
    port: int


@dataclass(eq=False)
class _Conn:
    ctl: socket.socket
    tcp: socket.socket
    route: Route
    anchor: socket.socket  # our hold on the master that carries it
    messages: mux.Messages = field(default_factory=mux.Messages)
    open: bool = False


class Forwarder:
    """The listeners and the connections they carry through the current master."""

    def __init__(self, counters: Counters, hold_timeout: float) -> None:
        self.counters = counters
        self.hold_timeout = hold_timeout
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self._lock = threading.Lock()
        self._tasks: list[Callable[[], None]] = []
        self._path: str | None = None  # the master's control socket, while it is up
        self._anchor: socket.socket | None = None
        self._on_gone: Callable[[], None] | None = None
        self._on_busy: Callable[[], object] | None = None
        self._started = 0
        self._listeners: dict[int, socket.socket] = {}
        self._routes: dict[int, Route] = {}
        self._held: collections.deque[tuple[socket.socket, Route, float]] = collections.deque()
        self._conns: dict[int, _Conn] = {}
        #: connections whose control connection ended: complete unless the master ends too
        self._closing: collections.deque[tuple[_Conn, float]] = collections.deque()
        #: anchors of earlier masters that still carry connections
        self._old_anchors: set[socket.socket] = set()
        self._closed = False
        self._ended = False  # the loop is over: tasks are refused
        #: takes accepted connections over instead of the master (resumable streams)
        self.acceptor: Acceptor | None = None
        self._thread = threading.Thread(target=self._loop, name="jupyter_tunnel-openssh",
                                        daemon=True)
        self._thread.start()

    # called from other threads ------------------------------------------------
    def _post(self, task: Callable[[], None]) -> bool:
        """Have the loop run ``task``; False when the loop has ended (nothing will run)."""
        with self._lock:
            if self._ended:
                return False
            self._tasks.append(task)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")
        return True

    def listen(self, port: int, route: Route) -> int:
        """Listen on 127.0.0.1:``port`` (0: any) with a backlog of 128; return the port."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise PortInUse.from_bind_error("127.0.0.1", port, exc) from None
        sock.setblocking(False)
        bound: int = sock.getsockname()[1]
        self._routes[bound] = route

        def add() -> None:
            self._listeners[bound] = sock
            self._sel.register(sock, selectors.EVENT_READ, ("listen", route))

        if not self._post(add):
            sock.close()
            raise HopUnreachable("the tunnel was closed")
        return bound

    def route(self, port: int) -> Route:
        """The route of the listener on ``port``."""
        return self._routes[port]

    def attach(self, path: str, anchor: socket.socket, on_gone: Callable[[], None],
               on_busy: Callable[[], object] | None = None) -> None:
        """Carry connections through the master at ``path`` from now on; call ``on_gone``
        (from a new thread) when ``anchor``, our control connection to it, ends, and
        ``on_busy`` (quick, in the loop) after every ``BUSY`` connections handed to it."""
        def task() -> None:
            self._drop_anchor()
            self._path, self._anchor, self._on_gone = path, anchor, on_gone
            self._on_busy = on_busy
            self._sel.register(anchor, selectors.EVENT_READ, ("anchor", None))
            held, self._held = list(self._held), collections.deque()
            for conn, route, _ in held:
                self._start(conn, route)

        if not self._post(task):
            mux.close_quietly(anchor)

    def detach(self) -> None:
        """Stop using the master (without ending it); new connections wait."""
        self._post(self._drop_anchor)

    def stats(self) -> dict[str, int]:
        """The counters, with the bytes of the connections open now so far (one snapshot:
        a connection that ends meanwhile is counted once)."""
        with self._lock:
            snap = self.counters.snapshot()
            for conn in self._conns.values():
                if conn.open:
                    got, sent = mux.tcp_bytes(conn.tcp)
                    snap["bytes_in"] += got
                    snap["bytes_out"] += sent
        return snap

    def close(self) -> None:
        """Close the listeners and every connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._post(lambda: None)
        if threading.current_thread() is not self._thread:
            self._thread.join(5)

    # the loop -----------------------------------------------------------------
    def _loop(self) -> None:
        try:
            while not self._closed:
                due = [q[0][-1] for q in (self._held, self._closing) if q]
                timeout = max(0.0, min(due) - time.monotonic()) if due else None
                for key, _ in self._sel.select(timeout):
                    kind, data = key.data
                    try:
                        if kind == "listen":
                            self._accept(key.fileobj, data)  # type: ignore[arg-type]
                        elif kind == "ctl":
                            self._control(data)
                        elif kind == "anchor":
                            self._anchor_readable()
                        elif kind == "old_anchor":
                            self._old_anchor_readable(key.fileobj)  # type: ignore[arg-type]
                        else:
                            self._wake_r.recv(4096)
                    except Exception:  # one connection's trouble must not stop the others
                        log.exception("openssh forwarder: %s event failed", kind)
                with self._lock:
                    tasks, self._tasks = self._tasks, []
                for task in tasks:
                    task()
                self._expire_held()
                self._expire_closing()
        finally:
            self._shutdown()

    def _accept(self, listener: socket.socket, route: Route) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: try again a little later
                log.debug("accept failed: %s", exc)  # (the listener stays readable: no spin)
                time.sleep(0.05)
                return
            if not may_use(conn):
                conn.close()
                continue
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            acceptor = self.acceptor
            if acceptor is not None:
                try:
                    acceptor(conn, route.host, route.port)
                except Exception:  # a bug there must cost this connection, not the listeners
                    log.exception("the acceptor failed")
                    conn.close()
            elif self._path is None:
                self._held.append((conn, route, time.monotonic() + self.hold_timeout))
            else:
                self._start(conn, route)

    def _start(self, conn: socket.socket, route: Route) -> None:
        assert self._path is not None
        try:
            ctl = mux.start_stdio_forward(self._path, conn, route.host, route.port)
        except OSError as exc:  # the master just went away: wait for the next one
            log.debug("control socket %s: %s", self._path, exc)
            self._held.append((conn, route, time.monotonic() + self.hold_timeout))
            return
        assert self._anchor is not None
        record = _Conn(ctl, conn, route, self._anchor)
        with self._lock:
            self._conns[ctl.fileno()] = record
        self._sel.register(ctl, selectors.EVENT_READ, ("ctl", record))
        self._started += 1
        if self._started % BUSY == 0 and self._on_busy is not None:
            self._on_busy()

    def _control(self, conn: _Conn) -> None:
        with self._lock:
            if self._conns.get(conn.ctl.fileno()) is not conn:
                return  # ended or held again earlier in this round (its master's end)
        try:
            data = conn.ctl.recv(4096)
            messages = conn.messages.feed(data) if data else []
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            log.debug("control connection failed: %s", exc)
            data, messages = b"", []
        except mux.MuxError as exc:  # nonsense from the master: give this connection up
            log.debug("control connection failed: %s", exc)
            self._end(conn)
            return
        refused = False
        for kind, body in messages:
            if kind == mux.S_SESSION_OPENED and not conn.open:
                conn.open = True
                self.counters.opened()
            elif kind in (mux.S_FAILURE, mux.S_PERMISSION_DENIED):
                log.debug("forward refused by the master: %s", mux.reason(body))
                data, refused = b"", True
        if data:
            return
        if not conn.open and not refused:
            self._hold_again(conn)
            if self._path is not None and self._anchor is not None:
                self._anchor_readable()  # probably gone too: find out now
            return
        if not conn.open:  # refused: closed as `ssh -L` closes it
            self._end(conn)
        elif _ended(conn.anchor):
            self._end(conn, reset=True)
        else:  # complete, unless its master turns out to be ending (see the module doc)
            self._sel.unregister(conn.ctl)
            self._closing.append((conn, time.monotonic() + GRACE))

    def _hold_again(self, conn: _Conn) -> None:
        """The master ended before it took the connection on (it never read from it): the
        next master carries it."""
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.ctl)
        with self._lock:
            self._conns.pop(conn.ctl.fileno(), None)
        mux.close_quietly(conn.ctl)
        self._held.append((conn.tcp, conn.route, time.monotonic() + self.hold_timeout))

    def _end(self, conn: _Conn, *, reset: bool = False) -> None:
        """Forget a connection and close it: with a reset when it was cut."""
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.ctl)
        with self._lock:
            self._conns.pop(conn.ctl.fileno(), None)
            if conn.open:
                got, sent = mux.tcp_bytes(conn.tcp)
                with self.counters.lock:
                    self.counters.bytes_in += got
                    self.counters.bytes_out += sent
                self.counters.ended()
        if reset:
            _reset(conn.tcp)
        mux.close_quietly(conn.ctl, conn.tcp)
        anchor = conn.anchor
        if anchor in self._old_anchors and not self._carried_by(anchor):
            self._old_anchors.discard(anchor)
            self._sel.unregister(anchor)
            mux.close_quietly(anchor)

    def _carried_by(self, anchor: socket.socket) -> list[_Conn]:
        """The connections (open or closing) that the master of ``anchor`` carries."""
        with self._lock:
            return [c for c in self._conns.values() if c.anchor is anchor]

    def _cut(self, anchor: socket.socket) -> None:
        """The master of ``anchor`` ended: reset every connection it carried; those it had
        not taken on yet wait for the next one."""
        for conn in self._carried_by(anchor):
            if conn.open:
                self._end(conn, reset=True)
            else:
                self._hold_again(conn)
        self._closing = collections.deque(x for x in self._closing if x[0].anchor is not anchor)

    def _expire_closing(self) -> None:
        now = time.monotonic()
        while self._closing and self._closing[0][1] <= now:
            conn = self._closing.popleft()[0]
            self._end(conn, reset=_ended(conn.anchor))

    def _old_anchor_readable(self, anchor: socket.socket) -> None:
        if not _ended(anchor):
            return
        self._old_anchors.discard(anchor)
        self._sel.unregister(anchor)
        self._cut(anchor)
        mux.close_quietly(anchor)

    def _anchor_readable(self) -> None:
        assert self._anchor is not None
        try:
            if self._anchor.recv(4096):
                return  # nothing is expected on it; ignore
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            pass
        on_gone = self._on_gone
        self._cut(self._anchor)
        self._drop_anchor()
        if on_gone is not None:
            threading.Thread(target=on_gone, name="jupyter_tunnel-ssh-gone", daemon=True).start()

    def _drop_anchor(self) -> None:
        """Stop using the current master; while it still carries connections, keep our hold
        on it, to learn whether it ends before they do."""
        anchor = self._anchor
        if anchor is not None:
            self._sel.unregister(anchor)
            if self._carried_by(anchor):
                self._old_anchors.add(anchor)
                self._sel.register(anchor, selectors.EVENT_READ, ("old_anchor", None))
            else:
                mux.close_quietly(anchor)
        self._path, self._anchor, self._on_gone, self._on_busy = None, None, None, None

    def _expire_held(self) -> None:
        now = time.monotonic()
        while self._held and self._held[0][2] <= now:
            conn = self._held.popleft()[0]
            log.debug("a held connection gave up waiting for the SSH connection")
            _reset(conn)
            mux.close_quietly(conn)

    def _shutdown(self) -> None:
        with self._lock:
            self._ended = True
            tasks, self._tasks = self._tasks, []
        for task in tasks:  # a listener or an anchor posted while the loop was ending
            with contextlib.suppress(Exception):
                task()
        for sock in self._listeners.values():
            mux.close_quietly(sock)
        self._listeners.clear()
        for conn, _ in self._closing:  # ended by the far end just before the close
            self._end(conn, reset=_ended(conn.anchor))
        self._closing.clear()
        for conn in list(self._conns.values()):  # cut by the close
            self._end(conn, reset=True)
        for held in self._held:
            _reset(held[0])
            mux.close_quietly(held[0])
        self._held.clear()
        self._drop_anchor()
        for anchor in self._old_anchors:
            mux.close_quietly(anchor)
        self._old_anchors.clear()
        self._sel.close()
        mux.close_quietly(self._wake_r, self._wake_w)


def _ended(anchor: socket.socket) -> bool:
    """Whether the master held by ``anchor`` ended: nothing is ever sent on it, so it is
    readable only at its end (or it was closed already)."""
    try:
        return not anchor.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:
        return True


def _reset(sock: socket.socket) -> None:
    """Make the close of ``sock`` a reset (RST), not an EOF."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
