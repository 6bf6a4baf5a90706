"""Keeping a ready tunnel ready: health checks, degraded state, reconnects with backoff.

One daemon thread per tunnel.  It sleeps until a backend's keepalive reports a lost hop
(or until the next api/status check is due) and then acts:

- a lost hop: the SSH chain is rebuilt hop by hop on the same listeners (so the local
  port and URL stay), with capped exponential backoff and jitter between attempts.
  Errors that waiting cannot fix (a refused key, a changed host key, forwarding
  forbidden) end it at once in state ``failed``: no retry storm against a server that
  penalises them.  While the first hop does not even accept TCP, a cheap probe each
  second notices its return, so the tunnel is back within about a second of the network.
- the remote Jupyter not answering while SSH is up: state ``degraded``; its runtime
  files are read again, so a server restarted with a new token (or port) is found and
  the tunnel becomes ``ready`` with the new URL.
- a reverse forward refused after a reconnect (the server still holds the port for the
  lost connection until it notices the loss): state ``degraded``, the new connection is
  kept, and only the forward is asked for again.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from . import detect
from .backends import Backend
from .errors import (
    HopTimeout,
    HopUnreachable,
    RemoteJupyterNotFound,
    RemoteJupyterNotReady,
    RemotePortRefused,
    TunnelError,
)
from .login.questions import Ask
from .spec import TunnelSpec
from .sshconfig import ResolvedHop
from .state import Settings, State

log = logging.getLogger("jupyter_tunnel")

#: first wait between reconnect attempts, in seconds (doubled each time up to the cap)
FIRST_DELAY = 1.0
#: how often counters are written to the registry while nothing else happens
SAVE_EVERY = 5.0
#: limit for a remote command of a health check (a hung NFS home must not stall it)
CHECK_TIMEOUT = 10.0


def backoff(attempt: int, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2, …): exponential,
    capped, with jitter (a random half to whole of the step), so that many clients that
    lost the same server do not come back in lockstep."""
    step = min(cap, FIRST_DELAY * 2.0 ** min(attempt - 1, 30))
    jitter: float = (rng or random).random()
    return step * (0.5 + 0.5 * jitter)


def reachable(hop: ResolvedHop, timeout: float) -> bool:
    """Whether a TCP connection to the first hop's SSH port can be made now."""
    try:
        with socket.create_connection((hop.hostname, hop.port), timeout=timeout):
            return True
    except OSError:
        return False


class Supervised(Protocol):
    """What the supervisor reads of its tunnel (and the counters it keeps there)."""

    name: str
    spec: TunnelSpec
    chain: list[ResolvedHop]
    settings: Settings
    state: State
    problem: str | None
    remote: detect.RemoteServer | None
    local_port: int | None
    reconnects: int
    attempt: int
    next_try: float | None

    @property
    def backend(self) -> Backend | None: ...

    def live_counters(self) -> dict[str, object]:
        """What changes while the tunnel just runs (traffic, resumable connections held)."""
        ...

    def backend_ask(self) -> Ask | None:
        """What a reconnect asks the hops' questions through (None: no one)."""
        ...

    def run_remote(self, script: str, *args: str, timeout: float | None = None
                   ) -> tuple[int, str, str]: ...


@dataclass(frozen=True)
class TunnelHooks:
    """What the supervisor may make its tunnel do, handed over by the tunnel itself."""

    #: move to a state with a problem (or none); False when the tunnel already ended
    set_state: Callable[[State, str | None], bool]
    #: end the tunnel as failed with this error
    fail: Callable[[TunnelError], None]
    #: write the tunnel's record (counters, state) now
    save: Callable[[], None]
    #: tell the user something (a new token, a host key added)
    notice: Callable[[str], None]
    #: a hop is being connected
    on_hop: Callable[[int, ResolvedHop], None]
    #: the SSH connection is back after a loss (resumable streams reattach)
    reconnected: Callable[[], None] = lambda: None


class Supervisor:
    """The thread that keeps one tunnel alive."""

    def __init__(self, tunnel: Supervised, hooks: TunnelHooks) -> None:
        self.tunnel = tunnel
        self.hooks = hooks
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lost: TunnelError | None = None
        self._force = False
        self._generation = 0
        #: a reverse forward the server refused after a reconnect, asked for again
        self._reverse_refused: TunnelError | None = None
        self._last_check = time.monotonic()
        self._last_saved: dict[str, object] = {}
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"jupyter_tunnel-{tunnel.name}")

    def start(self) -> None:
        """Watch the connection and start the thread."""
        self._watch()
        self._thread.start()

    def stop(self) -> None:
        """Tell the thread to end (at its next step)."""
        self._stop.set()
        self._wake.set()

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the thread to end (unless called from it)."""
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def reconnect_now(self) -> None:
        """Rebuild the connection at once, as after a loss."""
        self._force = True
        self._wake.set()

    # watching -----------------------------------------------------------------
    def _watch(self) -> None:
        """Keepalives on every hop of the current connection; a loss wakes the thread.
        Raises :class:`HopUnreachable` if the connection is already gone."""
        self._generation += 1
        generation = self._generation
        s, backend = self.tunnel.settings, self.tunnel.backend
        assert backend is not None

        def on_dead(hop: ResolvedHop, message: str, timed_out: bool) -> None:
            if generation == self._generation:  # not a connection already replaced
                kind = HopTimeout if timed_out else HopUnreachable
                self._lost = kind(message, hop=hop.alias)
                backend.disconnect()  # fails at once whatever still waits on the dead link
                self._wake.set()

        backend.keepalive(s.keepalive_interval, s.keepalive_count_max, on_dead)

    def _tick(self) -> float:
        interval = self.tunnel.settings.health_interval or SAVE_EVERY
        if self.tunnel.state is State.DEGRADED:
            return min(interval, 2.0)
        return min(interval, SAVE_EVERY)

    def _run(self) -> None:
        tunnel = self.tunnel
        try:
            while not self._stopped():
                self._wake.wait(self._tick())
                self._wake.clear()
                if self._stopped():
                    return
                lost, self._lost = self._lost, None
                backend = tunnel.backend
                if lost is not None or self._force or backend is None or not backend.alive():
                    if lost is None and self._force:
                        lost = HopUnreachable("reconnecting as asked")
                    elif lost is None:
                        hop = backend.dead_hop() if backend is not None else None
                        lost = HopUnreachable(
                            f"the connection to {hop.label if hop else 'a hop'} was closed",
                            hop=hop.alias if hop else None)
                    self._force = False
                    self._reconnect(lost)
                    continue
                if self._reverse_refused is not None:
                    self._retry_reverse()
                elif self._health_due():
                    self._check_jupyter()
                self._save_counters()
        except Exception as exc:  # never die silently: the tunnel would look alive
            log.exception("tunnel %s: supervisor failed", tunnel.name)
            self.hooks.fail(TunnelError(f"internal error while keeping the tunnel up: {exc}"))

    def _stopped(self) -> bool:
        return self._stop.is_set() or self.tunnel.state in (State.FAILED, State.CLOSED)

    def _health_due(self) -> bool:
        s, tunnel = self.tunnel.settings, self.tunnel
        if not (tunnel.spec.jupyter and s.health_interval):
            return False
        interval = min(s.health_interval, 2.0) if tunnel.state is State.DEGRADED \
            else s.health_interval
        if time.monotonic() - self._last_check < interval:
            return False
        self._last_check = time.monotonic()
        return True

    def _save_counters(self) -> None:
        stats = self.tunnel.live_counters()
        if stats != self._last_saved:
            self._last_saved = stats
            self.hooks.save()

    def _settle(self, problem: str | None) -> None:
        """Ready, or degraded with ``problem`` (a refused reverse forward counts too)."""
        if problem is None and self._reverse_refused is not None:
            problem = self._reverse_refused.message
        tunnel = self.tunnel
        if problem is None:
            if tunnel.state is not State.READY:
                self.hooks.set_state(State.READY, None)
        elif tunnel.state is not State.DEGRADED or tunnel.problem != problem:
            log.info("tunnel %s degraded: %s", tunnel.name, problem)
            self.hooks.set_state(State.DEGRADED, problem)

    # the remote Jupyter -------------------------------------------------------
    def _check_jupyter(self) -> None:
        """api/status through the tunnel; when it fails with SSH up, look for the server
        again (it may have restarted with a new token) and go degraded or ready."""
        tunnel = self.tunnel
        if tunnel.remote is None or tunnel.local_port is None:
            return
        timeout = min(5.0, max(2.0, tunnel.settings.health_interval))
        if detect.status_once(tunnel.remote, tunnel.local_port, timeout) == 200:
            self._settle(None)
            return
        backend = tunnel.backend
        if backend is None or not backend.alive():
            return  # the keepalives report the lost hop
        try:
            problem = self._jupyter_problem()
        except TunnelError:
            return  # SSH went down meanwhile: the keepalives report it
        self._settle(problem)

    def _jupyter_problem(self) -> str | None:
        """What is wrong with the remote Jupyter (None: it answers through the tunnel); a
        failed check is a problem while SSH is up, else raised as the lost connection."""
        tunnel = self.tunnel
        try:
            return self._refresh_jupyter()
        except TunnelError as exc:
            if tunnel.backend is None or not tunnel.backend.alive():
                raise
            return f"the Jupyter server on {tunnel.chain[-1].alias} cannot be checked: " \
                   f"{exc.message}"

    def _refresh_jupyter(self) -> str | None:
        """Find the remote server again and point the forward at it; None if it answers,
        else what is wrong.  Raises a :class:`TunnelError` if the remote command fails."""
        tunnel = self.tunnel
        host = tunnel.chain[-1].alias
        old = tunnel.remote
        assert old is not None and tunnel.local_port is not None and tunnel.backend is not None

        def run(script: str, *args: str) -> tuple[int, str, str]:
            return tunnel.run_remote(script, *args, timeout=CHECK_TIMEOUT)

        servers = detect.discover(run, host)
        same_port = any(x.alive and x.port == old.port for x in servers)
        try:
            fresh = detect.choose(servers, host, tunnel.spec.remote_port
                                  or (old.port if same_port else None),
                                  tunnel.spec.base_url_for(tunnel.name))
        except RemoteJupyterNotFound:
            every = min(tunnel.settings.health_interval, 2.0)
            then = f"the tunnel picks it up within {every:g} s" if every else \
                "reconnect the tunnel to pick it up"
            return f"no Jupyter server runs on {host} any more: start it again there and {then}"
        if fresh != old:
            tunnel.backend.retarget(tunnel.local_port, fresh.forward_host, fresh.port)
            tunnel.remote = fresh
        try:
            detect.wait_ready(fresh, tunnel.local_port, host, 3.0)
        except RemoteJupyterNotReady as exc:
            return exc.message
        if fresh.token != old.token or fresh.port != old.port:
            url = detect.local_url(fresh, tunnel.local_port, with_token=False)
            self.hooks.notice(f"the Jupyter server on {host} restarted: the tunnel now reaches "
                              f"it at {url} with its new token (jupyter tunnel status "
                              f"{tunnel.name} shows the full URL)")
        return None

    # reverse forwards ---------------------------------------------------------
    def _restore_reverse(self) -> None:
        backend = self.tunnel.backend
        assert backend is not None
        try:
            backend.restore_remote()
        except RemotePortRefused as exc:
            # most often the server still holds the port for the lost connection
            self._reverse_refused = TunnelError(
                f"{exc.message.split(' for --reverse', 1)[0]} again after the reconnect: the "
                "server may still hold it for the lost connection; retrying", hop=exc.hop)
        else:
            self._reverse_refused = None

    def _retry_reverse(self) -> None:
        try:
            self._restore_reverse()
        except TunnelError:
            return  # SSH went down: the next round reconnects
        self._settle(None)

    # reconnecting -------------------------------------------------------------
    def _reconnect(self, loss: TunnelError) -> None:
        tunnel, s = self.tunnel, self.tunnel.settings
        backend = tunnel.backend
        assert backend is not None
        self._generation += 1  # the old connection's keepalive is no longer heard
        backend.disconnect()
        log.info("tunnel %s: %s; reconnecting", tunnel.name, loss.message)
        began = time.monotonic()
        error = loss
        tunnel.attempt = 0
        while not self._stopped():
            tunnel.attempt += 1
            tunnel.next_try = None
            if not self.hooks.set_state(State.RECONNECTING, error.message):
                return
            first = tunnel.chain[0]
            tcp_down = False
            try:
                if not reachable(first, min(2.0, first.connect_timeout or s.connect_timeout)):
                    tcp_down = True
                    raise HopUnreachable(f"cannot reach {first.label}", hop=first.alias)
                # a hop that asks (a one-time code) asks the front end again; with no one
                # to ask, AnswerNeeded (an AuthError, not retryable) ends the tunnel
                backend.connect(tunnel.chain, self.hooks.on_hop, s.connect_timeout,
                                self.hooks.notice, ask=tunnel.backend_ask())
                self._watch()
                self._restore_reverse()
                self.hooks.reconnected()
                problem = self._jupyter_problem() if tunnel.remote is not None else None
                if not backend.alive():
                    raise HopUnreachable("the connection was lost again at once")
            except TunnelError as exc:
                self._generation += 1
                backend.disconnect()
                if self._stopped():
                    return
                if not exc.retryable:
                    log.info("tunnel %s: %s; not retrying", tunnel.name, exc.message)
                    self.hooks.fail(exc)
                    return
                spent = time.monotonic() - began
                if s.reconnect_give_up and spent >= s.reconnect_give_up:
                    self.hooks.fail(type(exc)(
                        f"gave up reconnecting after {tunnel.attempt} attempt(s) in {spent:.0f} s"
                        f": {exc.message}", hop=exc.hop))
                    return
                error = exc
                self._wait_to_retry(exc, probe=tcp_down)
                continue
            tunnel.reconnects += 1
            tunnel.attempt, tunnel.next_try = 0, None
            self._force, self._lost = False, None  # asked for during this reconnect: done
            self._last_check = time.monotonic()
            log.info("tunnel %s: reconnected after %.1f s", tunnel.name, time.monotonic() - began)
            self._settle(problem)
            return

    def _wait_to_retry(self, error: TunnelError, *, probe: bool) -> None:
        """Sleep out the backoff; wake early when the first hop accepts TCP again (if that
        was what failed), or when asked to stop or to reconnect now."""
        tunnel = self.tunnel
        delay = backoff(tunnel.attempt, tunnel.settings.reconnect_max_delay)
        tunnel.next_try = time.time() + delay
        self.hooks.set_state(State.RECONNECTING, error.message)
        first = tunnel.chain[0]
        end = time.monotonic() + delay
        while not self._stopped():
            left = end - time.monotonic()
            if left <= 0:
                return
            if self._wake.wait(min(1.0, left)):
                self._wake.clear()
                if self._force:
                    self._force = False
                    return
            self._save_counters()  # what resumable connections hold shows while waiting
            if probe and reachable(first, 0.5):
                return
