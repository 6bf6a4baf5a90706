"""A tunnel: its states, the steps that open it, and the events it reports."""

from __future__ import annotations

import contextlib
import enum
import logging
import shlex
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import detect, procinfo
from .backends import Backend, make_backend
from .errors import HopTimeout, HopUnreachable, PortInUse, TunnelError
from .registry import Registry
from .spec import TunnelSpec
from .sshconfig import ResolvedHop

log = logging.getLogger("jupyter_tunnel")


def check_port_free(port: int) -> None:
    """Raise :class:`PortInUse` if 127.0.0.1:port cannot be bound now."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise PortInUse.from_bind_error("127.0.0.1", port, exc) from None


class State(str, enum.Enum):
    """Where a tunnel is in its life."""

    CONNECTING = "connecting"
    DETECTING = "detecting"
    READY = "ready"
    DEGRADED = "degraded"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    CLOSED = "closed"


@dataclass(frozen=True)
class Settings:
    """Engine settings (the manager fills them from its traits)."""

    connect_timeout: float = 10.0
    keepalive_interval: int = 15
    keepalive_count_max: int = 3
    ready_timeout: float = 15.0
    launch_timeout: float = 60.0
    backend: str = "sshtunnel"


#: called with the tunnel and a short event name ("state", "hop")
EventCallback = Callable[["Tunnel", str], None]


class Tunnel:
    """One tunnel to a remote Jupyter server through a chain of hops."""

    def __init__(self, spec: TunnelSpec, chain: list[ResolvedHop], name: str, *,
                 settings: Settings | None = None, registry: Registry | None = None,
                 owner: str = "python",
                 backend_factory: Callable[[str], Backend] = make_backend) -> None:
        self.spec = spec
        self.chain = chain
        self.name = name
        self.settings = settings or Settings()
        self.registry = registry
        self.owner = owner
        self._backend_factory = backend_factory
        self._backend: Backend | None = None
        self._callbacks: list[EventCallback] = []
        self._lock = threading.RLock()
        self.state = State.CONNECTING
        #: index in ``chain`` of the hop being connected
        self.hop_index = 0
        self.error: TunnelError | None = None
        self.remote: detect.RemoteServer | None = None
        self.local_port: int | None = None
        self.created = time.time()
        self.since = self.created
        self.reconnects = 0
        #: things the user should know (host keys added to known_hosts)
        self.notices: list[str] = []
        self.pid, self.started = procinfo.self_identity()

    # events -------------------------------------------------------------
    def on_event(self, callback: EventCallback) -> None:
        """Call ``callback(tunnel, event)`` on every state or hop change (from any thread)."""
        self._callbacks.append(callback)

    def _emit(self, event: str) -> None:
        for callback in list(self._callbacks):
            try:
                callback(self, event)
            except Exception:  # a broken view must not break the tunnel
                log.exception("tunnel event callback failed")

    def _set_state(self, state: State) -> None:
        with self._lock:
            self.state = state
            self.since = time.time()
        self._save()
        self._emit("state")

    # views --------------------------------------------------------------
    @property
    def url(self) -> str | None:
        """The local URL of the remote JupyterLab, token included, once forwarded."""
        if self.remote is None or self.local_port is None:
            return None
        return detect.local_url(self.remote, self.local_port)

    @property
    def hops(self) -> list[str]:
        """The hop chain as the user named it, first jump host first."""
        return [hop.alias for hop in self.chain]

    def to_dict(self) -> dict[str, Any]:
        """The tunnel's JSON form (the same for the CLI, REST and the registry)."""
        stats = self._backend.stats() if self._backend is not None else {}
        return {
            "name": self.name,
            "state": self.state.value,
            "target": self.chain[-1].alias,
            "hops": self.hops,
            "hop_index": self.hop_index,
            "local_port": self.local_port,
            "remote_port": self.remote.port if self.remote else self.spec.remote_port,
            "url": self.url,
            "owner": self.owner,
            "pid": self.pid,
            "started": self.started,
            "created": self.created,
            "since": self.since,
            "reconnects": self.reconnects,
            "error": self.error.to_dict() if self.error else None,
            "orphaned": False,
            **stats,
        }

    def _save(self) -> None:
        if self.registry is not None and self.state not in (State.FAILED, State.CLOSED):
            self.registry.write(self.to_dict())

    # life ---------------------------------------------------------------
    def open(self) -> None:
        """Connect, find the remote Jupyter, forward, and check it answers; or raise.

        On failure nothing is left behind: no connection, no listener, no record.
        """
        if self.registry is not None:
            self.registry.claim(self.to_dict())
        try:
            self._open()
        except TunnelError as exc:
            self._fail(exc)
            raise
        except BaseException:
            self._fail(None)
            raise

    def _open(self) -> None:
        s = self.settings
        if self.spec.local_port:
            check_port_free(self.spec.local_port)  # say so now, not after every hop
        self._backend = backend = self._backend_factory(s.backend)
        self._set_state(State.CONNECTING)
        backend.connect(self.chain, self._on_hop, s.connect_timeout, self._on_notice)
        self._set_state(State.DETECTING)
        self.remote = self._find_remote(backend)
        self.local_port = backend.forward_local(
            self.spec.local_port, self.remote.forward_host, self.remote.port)
        detect.wait_ready(self.remote, self.local_port, self.chain[-1].alias, s.ready_timeout)
        self._set_state(State.READY)
        backend.keepalive(s.keepalive_interval, s.keepalive_count_max, self._on_dead)

    def _on_dead(self, hop: ResolvedHop, message: str, timed_out: bool) -> None:
        log.info("tunnel %s: %s", self.name, message)
        self._fail((HopTimeout if timed_out else HopUnreachable)(message, hop=hop.alias))

    def _on_notice(self, message: str) -> None:
        self.notices.append(message)
        log.info("tunnel %s: %s", self.name, message)
        self._emit("notice")

    def loss_reason(self) -> str:
        """Why a ready tunnel stopped being alive, naming the hop where it can."""
        if self.error is not None:
            return self.error.message
        hop = self._backend.dead_hop() if self._backend is not None else None
        return f"the connection to {hop.label} was closed" if hop else "the tunnel was closed"

    def _on_hop(self, index: int, hop: ResolvedHop) -> None:
        self.hop_index = index
        self._emit("hop")

    def _find_remote(self, backend: Backend) -> detect.RemoteServer:
        s = self.settings

        def run(script: str, *args: str) -> tuple[int, str, str]:
            command = " ".join([detect.REMOTE_SHELL, "--", *map(shlex.quote, args)])
            return backend.run(command, timeout=max(30.0, s.launch_timeout), stdin=script)

        return detect.find_server(run, self.chain[-1].alias, self.spec.remote_port,
                                  launch=self.spec.launch, launch_timeout=s.launch_timeout,
                                  on_launch=lambda: self._emit("launch"))

    def _fail(self, error: TunnelError | None) -> None:
        with self._lock:
            self.error = error
            self.state = State.FAILED
            self.since = time.time()
        self._teardown()
        self._emit("state")

    def _teardown(self) -> None:
        if self._backend is not None:
            with contextlib.suppress(Exception):
                self._backend.close()
        if self.registry is not None:
            with contextlib.suppress(Exception):
                self.registry.remove(self.name, owner_pid=self.pid)

    def close(self) -> None:
        """Stop forwarding and disconnect; idempotent."""
        with self._lock:
            if self.state is State.CLOSED:
                return
            self.state = State.CLOSED
            self.since = time.time()
        self._teardown()
        self._emit("state")

    def alive(self) -> bool:
        """Whether the connection is up (the tunnel is ready and every hop connected)."""
        return self.state is State.READY and self._backend is not None and self._backend.alive()

    def __enter__(self) -> Tunnel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Tunnel {self.name} {' -> '.join(self.hops)} {self.state.value}>"
