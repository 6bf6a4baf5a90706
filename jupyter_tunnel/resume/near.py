"""The laptop side of resumable streams: it holds the near end of every forwarded connection.

A backend hands each accepted local connection to ``NearEnd.adopt`` with the target as
the helper sees it; the engine opens a *link* for it (``connect_link``: a byte pipe to
the helper's Unix socket, in practice an SSH channel) and carries the connection as a
stream of numbered bytes (``replay``).  A control link (stream id 0) stays open beside
them, with an ACK every ``keepalive`` seconds that the helper echoes.

When a link dies its stream is *held*: the local connection stays open and its bytes
are still taken, up to the stream's limit, then it pauses.  Links are retried with
backoff (at once after ``poke``); a new link says RESUME with what was received, the
helper answers WELCOME with what it has, and both sides replay the rest: nothing lost,
duplicated or reordered.  A control link silent for three keepalives drops every link
(the SSH session is half-dead).  A local connection is closed cleanly only when its
stream is complete both ways; every other end (outage over the limit, overflow, a
refusal, a reset by the helper, ``close``) is an RST.

This module holds the public side and the rounds; ``near_loop`` the loop, links and
their connector thread, ``near_streams`` the frames and the local sockets.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .frames import MAX_SECRET, MAX_TARGET, VERSION, Code, Hello, Mode, Reset
from .helper_loop import CONTROL_TARGET
from .near_loop import (
    _READ,
    _WRITE,
    CLOSE_GRACE,
    CONTROL,
    HIGH_WATER,
    MAX_CONNECTS,
    Link,
    NearSettings,
    NearStream,
    rst,
)
from .near_reverse import ReverseNear

__all__ = ["NearEnd", "NearSettings", "NearStatus"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NearStatus:
    """What the engine holds now; ``down_since`` is a wall-clock time (``time.time()``)."""

    streams_open: int = 0
    streams_held: int = 0  # waiting for a link (the helper has not welcomed them yet)
    bytes_buffered: int = 0  # not yet acknowledged by the helper, or not yet written locally
    link_up: bool = False  # the control link is welcomed
    down_since: float | None = None  # when the link went down (None: up, or never tried)
    error: str = ""  # the helper's last refusal of the control link
    bytes_in: int = 0  # written to the local connections, since the start
    bytes_out: int = 0  # read from them
    connections_total: int = 0  # local connections adopted


class NearEnd(ReverseNear):
    """The near end of a tunnel's resumable streams (see the module docstring).

    ``adopt``, ``poke``, ``status`` and ``close`` may be called from any thread;
    ``on_change`` is called from the engine's thread when the number of streams open or
    held, or the link's state, changes.  Stream ids count from ``first_id``; they must
    never repeat for one helper, so an engine that attaches to a helper that was
    already running (another process's, say) must start above every id used before.
    """

    def __init__(self, connect_link: Callable[[], socket.socket], secret: bytes,
                 settings: NearSettings | None = None,
                 on_change: Callable[[NearStatus], None] | None = None, *,
                 first_id: int = 1) -> None:
        if not 0 < len(secret) <= MAX_SECRET:
            raise ValueError(f"the secret must be 1-{MAX_SECRET} bytes")
        if not 0 < first_id < 2**63:
            raise ValueError("first_id must be from 1 to 2**63 - 1")
        super().__init__(settings or NearSettings(), connect_link)
        self._secret = secret
        self._on_change = on_change
        self._lock = threading.Lock()
        self._inbox: list[tuple[socket.socket, str]] = []
        self._poked = False
        self._closing = False
        self._deadline = 0.0
        self._next_id = first_id
        self._error = ""
        self._status = NearStatus()
        self._reported: tuple[int, int, bool] | None = None
        self._ended = False
        self._reverse_setup()

    # --- the public side (any thread) ---------------------------------------------------

    def start(self) -> None:
        """Start the engine's thread; it opens the control link at once."""
        with self._lock:
            if self._thread is not None or self._closing:
                raise RuntimeError("the engine was started or closed already")
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="jupyter-tunnel-near")
        self._thread.start()

    def adopt(self, sock: socket.socket, target: str) -> None:
        """Carry an accepted local connection to ``target`` (``host:port`` or an absolute
        Unix socket path, as the helper sees it); after ``close`` it is reset at once."""
        raw = target.encode("utf-8")
        if not 0 < len(raw) <= MAX_TARGET or target == CONTROL_TARGET:
            raise ValueError(f"not a target: {target!r}")
        with self._lock:
            taken = not self._closing
            if taken:
                self._inbox.append((sock, target))
        if taken:
            self._wake()
        else:
            rst(sock)

    def poke(self) -> None:
        """The SSH connection is back: retry links now rather than after the backoff."""
        with self._lock:
            self._poked = True
        self._wake()

    def status(self) -> NearStatus:
        """The state as of the engine's last round."""
        with self._lock:
            return self._status

    def close(self, timeout: float = 5.0) -> None:
        """Reset every local connection, end the helper (RESET SHUTDOWN on the control
        link), close every link and wait for the engine's threads; idempotent."""
        deadline = time.monotonic() + timeout
        with self._lock:
            first = not self._closing
            if first:
                self._closing = True
                self._deadline = deadline
            thread = self._thread
        if thread is None:
            if first:
                self._shutdown()
        else:
            self._wake()
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        self._connector.close(deadline)

    # --- rounds ---------------------------------------------------------------------------

    def _tick(self, now: float) -> bool:
        with self._lock:
            inbox, self._inbox = self._inbox, []
            poked, self._poked = self._poked, False
            closing = self._closing
        for sock, target in inbox:
            self._new_stream(sock, target, now)
        if closing:
            return True
        if poked:
            self._delay, self._next_try = self.settings.retry_first, now
        for key, result in self._connector.results():
            self._connected(key, result, now)
        self._reverse_tick(now)
        self._keepalive(now)
        for st in list(self._streams.values()):
            if st.stream.outage_exceeded(self.settings.outage, now):
                self._reset(st, Code.OUTAGE, f"outage longer than {self.settings.outage:g}s")
        for key, (*_, since) in list(self._doomed.items()):
            if now - since > self.settings.outage:  # the helper has reset it by itself
                del self._doomed[key]
        for link in list(self._links):
            if link.closing_at is not None and (not link.out
                                                or now - link.closing_at > CLOSE_GRACE):
                self._drop_link(link)
            elif link.closing_at is None and not link.welcomed \
                    and now - link.heard > 3 * self.settings.keepalive:
                self._lost(link)  # no answer to HELLO: a dead end, try again
        self._dial(now)
        self._interests()
        self._publish()
        return False

    def _timeout(self, now: float) -> float:
        settings, control, pending = self.settings, self._control, self._connector.pending
        ends = [st.stream.held_since + settings.outage for st in self._streams.values()
                if st.stream.held_since is not None]
        ends += [link.heard + 3 * settings.keepalive for link in self._links
                 if link.closing_at is None and (link is control or not link.welcomed)]
        if control is not None and control.welcomed:
            ends.append(self._next_ping)
        if len(pending) < MAX_CONNECTS and (
                (control is None and CONTROL not in pending)
                or any(key not in pending for key in self._doomed)
                or any(st.link is None and not st.stream.done and st not in pending
                       for st in self._streams.values())):
            ends.append(self._next_try)
        if any(link.closing_at is not None for link in self._links):
            ends.append(now + 0.5)
        return max(0.005, min([1.0, *(t - now for t in ends)]))

    def _interests(self) -> None:
        for link in self._links:
            st = link.owner
            events = _READ
            if link.closing_at is None and st is not None and len(st.to_local) >= HIGH_WATER:
                events = 0  # the local client is not reading: let the helper's buffer fill
            self._set(link.sock, events | (_WRITE if link.out else 0), ("link", link))
        for st in self._streams.values():
            if st.local is None:
                continue
            events = _WRITE if st.to_local else 0
            own = st.link
            if not st.local_eof and st.stream.writer.room > 0 \
                    and (own is None or len(own.out) < HIGH_WATER):
                events |= _READ
            self._set(st.local, events, ("local", st))

    def _fault(self, kind: str, obj: Any, exc: Exception) -> None:
        st = obj.owner if kind == "link" else obj if kind == "local" else None
        if isinstance(st, NearStream) and self._streams.get(st.stream.stream_id) is st:
            self._reset(st, Code.PROTOCOL, f"near end error: {exc}")
        elif kind == "link" and obj in self._links:
            self._lost(obj)

    def _publish(self) -> None:
        up = self._control is not None and self._control.welcomed
        held = sum(1 for st in self._streams.values() if st.stream.held_since is not None)
        buffered = sum(st.stream.writer.buffered + len(st.to_local)
                       for st in self._streams.values())
        status = NearStatus(len(self._streams), held, buffered, up,
                            None if up else self._down_since, self._error,
                            self.bytes_in, self.bytes_out, self.adopted)
        with self._lock:
            self._status = status
        key = (status.streams_open, status.streams_held, up)
        if key != self._reported and self._on_change is not None:
            try:
                self._on_change(status)
            except Exception:
                log.exception("resume: the on_change callback failed")
        self._reported = key

    def _shutdown(self) -> None:
        with self._lock:
            if self._ended:
                return
            self._ended = self._closing = True
            inbox, self._inbox = self._inbox, []
            deadline = self._deadline or time.monotonic() + 5.0
        for sock, _ in inbox:
            rst(sock)
        self._reverse_close()
        for st in list(self._streams.values()):
            st.stream.reset(Code.SHUTDOWN)
            if st.local is not None:
                self._forget_sock(st.local)
                rst(st.local)
                st.local = None
            self._forget_stream(st)
        control = self._control
        for link in list(self._links):
            if link is not control:
                self._drop_link(link)
        if control is None:
            control = self._last_control(deadline)
        if control is not None:
            self._forget_sock(control.sock)
            self._links.discard(control)
            _goodbye(control, deadline)
            control.sock.close()
        self._control = None
        self._connector.close(time.monotonic())  # a link that arrives later is closed
        self._close_loop()
        with self._lock:
            self._status = NearStatus(down_since=self._status.down_since, error=self._error,
                                      bytes_in=self.bytes_in, bytes_out=self.bytes_out,
                                      connections_total=self.adopted)


    def _last_control(self, deadline: float) -> Link | None:
        """No control link at close (not made yet, or lost a moment ago): get one if the
        connection allows before ``deadline``, so that the helper hears the goodbye."""
        if CONTROL not in self._connector.pending:
            self._connector.start(CONTROL)
        while time.monotonic() < deadline:
            for key, result in self._connector.results():
                if key == CONTROL and isinstance(result, socket.socket):
                    link = Link(result, None, Mode.NEW)
                    link.send(Hello(VERSION, Mode.NEW, 0, 0, self._secret, CONTROL_TARGET))
                    return link
                if isinstance(result, socket.socket):
                    result.close()
                elif key == CONTROL:
                    return None  # down: the helper ends by itself after its outage limit
            with contextlib.suppress(OSError):
                select.select([self._wake_r], [], [], min(0.1, deadline - time.monotonic()))
            self._drain_wake()
        return None


def _goodbye(control: Link, deadline: float) -> None:
    """RESET(SHUTDOWN) on the control link ends the helper; it closes the link once its
    files are gone, so wait for that."""
    sock = control.sock
    with contextlib.suppress(OSError):
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        sock.sendall(bytes(control.out) + Reset(Code.SHUTDOWN, "the tunnel is closing").encode())
        while time.monotonic() < deadline:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            if not sock.recv(65536):
                break


