"""Keeping a ready tunnel ready: health checks, degraded state, reconnects with backoff.

One daemon thread per tunnel.  It sleeps until a backend's keepalive reports a lost hop
(or until the next api/status check is due) and then acts:

- a lost hop: the SSH chain is rebuilt hop by hop on the same listeners (so the local
  port and URL stay), with capped exponential backoff and jitter between attempts.
  Errors that waiting cannot fix (a refused key, a changed host key, forwarding
  forbidden) end it at once in state ``failed``: no retry storm against a server that
  penalises them.  While the first hop cannot be reached, a cheap TCP probe each second
  notices its return, so the tunnel is back within about a second of the network.
- the remote Jupyter not answering while SSH is up: state ``degraded``; its runtime
  files are read again, so a server restarted with a new token (or port) is found and
  the tunnel becomes ``ready`` with the new URL.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time

from . import detect
from .errors import (
    HopTimeout,
    HopUnreachable,
    RemoteJupyterNotFound,
    RemoteJupyterNotReady,
    RemotePortRefused,
    TunnelError,
)
from .sshconfig import ResolvedHop
from .tunnel import State, Tunnel

log = logging.getLogger("jupyter_tunnel")

#: first wait between reconnect attempts, in seconds (doubled each time up to the cap)
FIRST_DELAY = 1.0
#: how often counters are written to the registry while nothing else happens
SAVE_EVERY = 5.0


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


def retry_can_help(error: TunnelError) -> bool:
    """Whether another reconnect attempt may succeed where this one failed."""
    # a remote port refused again after a reconnect is most often still held by the
    # server's side of the lost connection: it frees it once it notices the loss
    return error.retryable or isinstance(error, RemotePortRefused)


class Supervisor:
    """The thread that keeps one tunnel alive."""

    def __init__(self, tunnel: Tunnel) -> None:
        self.tunnel = tunnel
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lost: TunnelError | None = None
        self._force = False
        self._generation = 0
        self._last_check = time.monotonic()
        self._last_saved: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"jupyter_tunnel-{tunnel.name}")

    def start(self) -> None:
        """Watch the connection and start the thread."""
        self._watch()
        self._thread.start()

    def stop(self) -> None:
        """Let the thread end (it does at its next step)."""
        self._stop.set()
        self._wake.set()

    def reconnect_now(self) -> None:
        """Rebuild the connection at once, as after a loss."""
        self._force = True
        self._wake.set()

    # watching -----------------------------------------------------------------
    def _watch(self) -> None:
        """Keepalives on every hop of the current connection; a loss wakes the thread."""
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
                    if lost is None:
                        hop = backend.dead_hop() if backend is not None else None
                        lost = HopUnreachable(
                            "reconnect asked for" if self._force else
                            f"the connection to {hop.label if hop else 'a hop'} was closed",
                            hop=hop.alias if hop else None)
                    self._force = False
                    self._reconnect(lost)
                    continue
                if self._health_due():
                    try:
                        self._check_jupyter()
                    except TunnelError as exc:  # SSH went down meanwhile: handled next round
                        log.debug("tunnel %s: health check cut short: %s", tunnel.name, exc)
                self._save_counters()
        except Exception as exc:  # never die silently: the tunnel would look alive
            log.exception("tunnel %s: supervisor failed", tunnel.name)
            tunnel._fail(TunnelError(f"internal error while keeping the tunnel up: {exc}"))

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
        tunnel = self.tunnel
        backend = tunnel.backend
        stats = backend.stats() if backend is not None else {}
        if stats != self._last_saved:
            self._last_saved = stats
            with tunnel._lock:
                tunnel._save()

    # the remote Jupyter -------------------------------------------------------
    def _check_jupyter(self) -> None:
        """api/status through the tunnel; when it fails with SSH up, look for the server
        again (it may have restarted with a new token) and go degraded or ready."""
        tunnel = self.tunnel
        if tunnel.remote is None or tunnel.local_port is None:
            return
        timeout = min(5.0, max(2.0, tunnel.settings.health_interval))
        if detect.status_once(tunnel.remote, tunnel.local_port, timeout) == 200:
            if tunnel.state is State.DEGRADED:
                tunnel._set_state(State.READY)
            return
        backend = tunnel.backend
        if backend is None or not backend.alive():
            return  # the keepalives will report the lost hop
        problem = self._refresh_jupyter()
        if problem is None:
            tunnel._set_state(State.READY)
        elif tunnel.state is not State.DEGRADED or tunnel.problem != problem:
            log.info("tunnel %s degraded: %s", tunnel.name, problem)
            tunnel._set_state(State.DEGRADED, problem)

    def _refresh_jupyter(self) -> str | None:
        """Find the remote server again and point the forward at it; None if it answers,
        else what is wrong.  Raises :class:`HopUnreachable` if SSH went down meanwhile."""
        tunnel = self.tunnel
        host = tunnel.chain[-1].alias
        old = tunnel.remote
        assert old is not None and tunnel.local_port is not None and tunnel.backend is not None
        try:
            servers = detect.discover(tunnel.run_remote, host)
            same_port = any(x.alive and x.port == old.port for x in servers)
            fresh = detect.choose(servers, host, tunnel.spec.remote_port
                                  or (old.port if same_port else None))
        except RemoteJupyterNotFound as exc:
            return f"{exc.message}; the tunnel waits for it"
        if fresh != old:
            tunnel.backend.retarget(tunnel.local_port, fresh.forward_host, fresh.port)
            tunnel.remote = fresh
        try:
            detect.wait_ready(fresh, tunnel.local_port, host, 3.0)
        except RemoteJupyterNotReady as exc:
            return exc.message
        if fresh.token != old.token or fresh.port != old.port:
            tunnel._on_notice(f"the Jupyter server on {host} restarted; new URL: {tunnel.url}")
        return None

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
            if not tunnel._set_state(State.RECONNECTING, error.message):
                return
            try:
                first = tunnel.chain[0]
                if not reachable(first, min(2.0, first.connect_timeout or s.connect_timeout)):
                    raise HopUnreachable(f"cannot reach {first.label}", hop=first.alias)
                backend.connect(tunnel.chain, tunnel._on_hop, s.connect_timeout,
                                tunnel._on_notice)
                backend.restore_remote()
                problem = self._refresh_jupyter() if tunnel.remote is not None else None
            except TunnelError as exc:
                backend.disconnect()
                if self._stopped():
                    return
                if not retry_can_help(exc):
                    log.info("tunnel %s: %s; not retrying", tunnel.name, exc.message)
                    tunnel._fail(exc)
                    return
                spent = time.monotonic() - began
                if s.reconnect_give_up and spent >= s.reconnect_give_up:
                    tunnel._fail(type(exc)(
                        f"gave up reconnecting after {tunnel.attempt} attempt(s) in {spent:.0f} s"
                        f": {exc.message}", hop=exc.hop))
                    return
                error = exc
                self._wait_to_retry(exc)
                continue
            tunnel.reconnects += 1
            tunnel.attempt, tunnel.next_try = 0, None
            self._watch()
            self._last_check = time.monotonic()
            log.info("tunnel %s: reconnected after %.1f s", tunnel.name, time.monotonic() - began)
            tunnel._set_state(State.READY if problem is None else State.DEGRADED, problem)
            return

    def _wait_to_retry(self, error: TunnelError) -> None:
        """Sleep out the backoff; wake early when the first hop answers again (if that was
        what failed), or when asked to stop or to reconnect now."""
        tunnel = self.tunnel
        delay = backoff(tunnel.attempt, tunnel.settings.reconnect_max_delay)
        tunnel.next_try = time.time() + delay
        tunnel._set_state(State.RECONNECTING, error.message)
        first = tunnel.chain[0]
        probe = error.hop == first.alias and isinstance(error, HopUnreachable)
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
            if probe and reachable(first, 0.5):
                return
