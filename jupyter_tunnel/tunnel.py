"""A tunnel: its states, the steps that open it, and the events it reports."""

from __future__ import annotations

import contextlib
import logging
import secrets
import shlex
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from . import detect, procinfo
from .backends import Backend, make_backend
from .errors import PortInUse, TunnelError
from .login.door import door_of
from .login.mailbox import Mailbox
from .login.questions import Ask, Question
from .login.waiting import Waiter
from .registry import Registry
from .resume.launch import ResumeUnavailable
from .resume.tunnel_side import ResumeLimits, Resumer
from .spec import Forward, TunnelSpec
from .sshconfig import ResolvedHop
from .state import TERMINAL, Settings, State
from .supervise import Supervisor, TunnelHooks

log = logging.getLogger("jupyter_tunnel")


def check_port_free(port: int) -> None:
    """Raise :class:`PortInUse` if 127.0.0.1:port cannot be bound now."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise PortInUse.from_bind_error("127.0.0.1", port, exc) from None


#: called with the tunnel and a short event name ("state", "hop", "notice", "launch")
EventCallback = Callable[["Tunnel", str], None]
#: builds a backend from its name and hold timeout (keyword arguments: keepalive_interval,
#: keepalive_count_max)
BackendFactory = Callable[..., Backend]


_ADD_LOCK = threading.Lock()
#: reverse forwards the resume helper may listen for (others are sshd's, as with ssh -R)
LOOPBACK_BINDS = ("127.0.0.1", "localhost", "::1")


def forward_info(forward: Forward, bound: int) -> dict[str, Any]:
    """A forward as shown in the tunnel's JSON."""
    host = f"[{forward.host}]" if ":" in forward.host else forward.host
    if forward.remote:
        return {"type": "reverse", "listen": f"{forward.bind}:{bound}", "to": f"{host}:"
                f"{forward.port}", "spec": str(forward)}
    return {"type": "local", "listen": f"127.0.0.1:{bound}", "to": f"{host}:{forward.port}",
            "spec": str(forward), "local_port": bound}


class Tunnel:
    """One tunnel to a remote Jupyter server (or other services) through a chain of hops.

    Once ready, a supervisor thread (:mod:`.supervise`) keeps it so: it checks the remote
    Jupyter, and reconnects on the same local ports when a hop is lost.
    """

    def __init__(self, spec: TunnelSpec, chain: list[ResolvedHop], name: str, *,
                 settings: Settings | None = None, registry: Registry | None = None,
                 owner: str = "python", backend_factory: BackendFactory = make_backend,
                 ask: Ask | None = None) -> None:
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
        self._claimed = False
        self._done = threading.Event()
        self.state = State.CONNECTING
        #: index in ``chain`` of the hop being connected
        self.hop_index = 0
        #: why the tunnel failed (state failed)
        self.error: TunnelError | None = None
        #: what is wrong while degraded or reconnecting
        self.problem: str | None = None
        self.remote: detect.RemoteServer | None = None
        self.local_port: int | None = None
        #: extra local and reverse forwards, as shown in the JSON
        self.forwards: list[dict[str, Any]] = []
        #: the remote kernel this tunnel carries (kernels/provisioner.py), as recorded for
        #: ``kernels running`` and for cleanup to end it on the target; None for others
        self.kernel: dict[str, Any] | None = None
        self.created = time.time()
        self.since = self.created
        self.reconnects = 0
        #: reconnect attempt under way (0 when not reconnecting) and when the next one starts
        self.attempt = 0
        self.next_try: float | None = None
        #: things the user should know (host keys added to known_hosts, a new token)
        self.notices: list[str] = []
        self.pid, self.started = procinfo.self_identity()
        self._supervisor: Supervisor | None = None
        #: the resumable streams (``Settings.resume``), once their helper runs
        self._resumer: Resumer | None = None
        #: the front end's callback for the hops' questions (None: no one can be asked)
        self.ask = ask
        #: the question a hop asks now, waiting for an answer (never the answer)
        self.question: Question | None = None
        self._problem_before: str | None = None

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

    def _set_state(self, state: State, problem: str | None = None) -> bool:
        """Move to ``state`` (never out of failed or closed); False if that was too late."""
        with self._lock:
            if self.state in TERMINAL:
                return False
            self.state = state
            self.problem = problem
            self.since = time.time()
            self._save()
        self._emit("state")
        return True

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

    @property
    def backend(self) -> Backend | None:
        """The backend carrying the tunnel (None before the open and after a failure)."""
        return self._backend

    def to_dict(self) -> dict[str, Any]:
        """The tunnel's JSON form (the same for the CLI, REST and the registry)."""
        stats = self._traffic()
        backend = self._backend
        return {
            "name": self.name,
            "state": self.state.value,
            "target": self.chain[-1].alias,
            "hops": self.hops,
            "hop_index": self.hop_index,
            "jupyter": self.spec.jupyter,
            "local_port": self.local_port,
            "remote_port": self.remote.port if self.remote else self.spec.remote_port,
            "url": self.url,
            "remote_base_url": self.remote.base_url if self.remote else None,
            "forwards": list(self.forwards),
            "owner": self.owner,
            "pid": self.pid,
            "started": self.started,
            "created": self.created,
            "since": self.since,
            "reconnects": self.reconnects,
            "attempt": self.attempt,
            "next_try": self.next_try,
            "problem": self.problem,
            "error": self.error.to_dict() if self.error else None,
            "orphaned": False,
            "children": backend.children() if backend is not None else [],
            "resume": self._resumer.summary() if self._resumer is not None else None,
            "prompt": self.question.to_dict() if self.question is not None else None,
            "kernel": dict(self.kernel) if self.kernel is not None else None,
            **stats,
        }

    def _traffic(self) -> dict[str, int]:
        """The backend's counters plus those of the resumable connections (which the
        backend hands over, so it does not count them)."""
        backend, resumer = self._backend, self._resumer
        stats = dict(backend.stats()) if backend is not None else {}
        if resumer is not None and stats:
            status = resumer.status()
            for key, value in (("bytes_in", status.bytes_in), ("bytes_out", status.bytes_out),
                               ("connections", status.streams_open),
                               ("connections_total", status.connections_total)):
                stats[key] = stats.get(key, 0) + value
        return stats

    def live_counters(self) -> dict[str, object]:
        """Traffic counters and what the resumable connections hold (the supervisor saves
        the record when they change)."""
        resumer = self._resumer
        counters: dict[str, object] = dict(self._traffic())
        if resumer is not None:
            status = resumer.status()
            counters["resume"] = (status.streams_open, status.streams_held, status.link_up,
                                  status.bytes_buffered // 100_000)
        return counters

    def backend_ask(self) -> Ask | None:
        """What the backend asks through: the front end's callback behind the answer
        timeout, the question shown on the tunnel while it waits; None without one."""
        if self.ask is None:
            return None
        if isinstance(self.ask, Mailbox):
            if self.ask.door is None and self.registry is not None:
                self.ask.door = door_of(self.registry.path, self)  # other processes answer too
            self.ask.on_wait = lambda: self._emit("prompt")  # views: it waits there now
        return Waiter(self.ask, self.settings.answer_timeout, self._show_question,
                      cancelled=lambda: self.state in TERMINAL)

    def _show_question(self, question: Question | None) -> None:
        """The tunnel waits for an answer to ``question`` (None: no longer)."""
        with self._lock:
            if question is not None:
                self._problem_before = self.problem
                self.problem = f"waiting for an answer: {question.display}"
            elif self.question is not None:
                self.problem = self._problem_before
            self.question = question
            self._save()
        self._emit("prompt")

    def _save(self) -> None:
        if self.registry is not None and self._claimed and self.state not in TERMINAL:
            try:
                self.registry.save(self.to_dict(), owner_pid=self.pid)
            except (OSError, TunnelError) as exc:  # a full disk must not end a working tunnel
                log.warning("tunnel %s: cannot update the registry: %s", self.name, exc)

    def _save_locked(self) -> None:
        with self._lock:
            self._save()

    # life ---------------------------------------------------------------
    def claim(self) -> None:
        """Record the tunnel in the registry; without a chosen name, take the next free one
        (``beast``, ``beast-2``…) under the registry's lock."""
        if self.registry is None or self._claimed:
            return
        try:
            self.name = self.registry.claim(self.to_dict(), rename=self.spec.name is None)
        except TunnelError as exc:  # the name is taken: failed, and say so to the views
            self._fail(exc)
            raise
        self._claimed = True

    def open(self) -> None:
        """Connect, find the remote Jupyter, forward, and check it answers; or raise.

        On failure nothing is left behind: no connection, no listener, no record.
        Once ready, the tunnel is kept alive until :meth:`close`.
        """
        self.claim()
        try:
            self._open()
            supervisor = Supervisor(self, TunnelHooks(
                set_state=self._set_state, fail=self._fail, save=self._save_locked,
                notice=self._on_notice, on_hop=self._on_hop,
                reconnected=self._on_reconnected))
            supervisor.start()
            self._supervisor = supervisor
        except TunnelError as exc:
            self._fail(exc)
            raise
        except BaseException:
            self._fail(None)
            raise

    def _open(self) -> None:
        s, spec = self.settings, self.spec
        wanted = [f.listen_port for f in spec.forwards if f.listen_port]
        if spec.jupyter and spec.local_port:
            wanted.insert(0, spec.local_port)
        for port in wanted:
            check_port_free(port)  # say so now, not after every hop
        backend = self._backend_factory(
            s.backend, s.hold_timeout, keepalive_interval=s.keepalive_interval,
            keepalive_count_max=s.keepalive_count_max)
        with self._lock:  # close() may have come first: it could not cut what did not exist
            if self.state in TERMINAL:
                backend.close()
                raise TunnelError(f"tunnel {self.name} was closed while opening")
            self._backend = backend
        self._step(State.CONNECTING)
        backend.connect(self.chain, self._on_hop, s.connect_timeout, self._on_notice,
                        ask=self.backend_ask())
        if spec.jupyter:
            self._step(State.DETECTING)
            self.remote = self._find_remote()
        if s.resume and (spec.jupyter or spec.forwards or spec.reverse):
            self._start_resume(backend)
        if self.remote is not None:
            self.local_port = backend.forward_local(
                spec.local_port, self.remote.forward_host, self.remote.port)
        for forward in spec.forwards:
            bound = backend.forward_local(forward.listen_port, forward.host, forward.port)
            self.forwards.append(forward_info(forward, bound))
        for forward in spec.reverse:
            resumer = self._resumer
            # the helper listens there and its connections resume, on loopback only: any
            # other bind address stays sshd's to allow or refuse (GatewayPorts, PermitListen)
            if resumer is not None and forward.bind in LOOPBACK_BINDS:
                bound = resumer.listen(forward.bind, forward.listen_port, forward.host,
                                       forward.port)
            else:
                bound = backend.forward_remote(forward.listen_port, forward.host,
                                               forward.port, forward.bind)
            self.forwards.append(forward_info(forward, bound))
        if self.remote is not None and self.local_port is not None:
            detect.wait_ready(self.remote, self.local_port, self.chain[-1].alias,
                              s.ready_timeout)
        self._step(State.READY)

    def _start_resume(self, backend: Backend) -> None:
        """Start the helper and hand the local forwards' connections to it; when the target
        cannot run it, say so once and forward as before."""
        s = self.settings
        resumer = Resumer(backend, self.chain[-1].alias, f"jt-{secrets.token_hex(8)}",
                          ResumeLimits(stream_limit=s.resume_connection_buffer,
                                       tunnel_limit=s.resume_tunnel_buffer,
                                       outage=s.resume_outage),
                          hops=[{"host": h.alias, "user": h.user, "port": h.port}
                                for h in self.chain],
                          ssh_config=self.chain[-1].config_file, label=self.chain[-1].label)
        try:
            resumer.start(self.remote.pid if self.remote is not None else None)
        except ResumeUnavailable as exc:
            self._on_notice(f"connections will not resume after an outage: {exc}")
            return
        with self._lock:
            closed = self.state in TERMINAL
            if not closed:
                self._resumer = resumer
        if closed:
            resumer.close()
            raise TunnelError(f"tunnel {self.name} was closed while opening")
        backend.set_acceptor(resumer.adopt)

    def add_forward(self, host: str, port: int) -> int:
        """Forward a new local port (chosen free) to ``host:port`` as the target sees it,
        resumable like the others; the port stays until the tunnel closes."""
        with _ADD_LOCK:  # one resume helper, however many callers
            backend = self._backend
            if backend is None or self.state is not State.READY:
                raise TunnelError(f"tunnel {self.name} is {self.state.value}, not ready")
            if self.settings.resume and self._resumer is None:
                self._start_resume(backend)
            bound = backend.forward_local(0, host, port)
        with self._lock:
            self.forwards.append(forward_info(Forward(bound, host, port), bound))
        self._save_locked()
        return bound

    def set_kernel(self, kernel: dict[str, Any] | None) -> None:
        """Record the remote kernel this tunnel carries (None: none any more)."""
        with self._lock:
            self.kernel = dict(kernel) if kernel is not None else None
            self._save()

    def retarget_forward(self, local_port: int, host: str, port: int) -> None:
        """Point a forward added by :meth:`add_forward` at ``host:port`` (same local port):
        new connections go there."""
        backend = self._backend
        if backend is None:
            raise TunnelError(f"tunnel {self.name} is {self.state.value}")
        backend.retarget(local_port, host, port)
        with self._lock:
            self.forwards = [forward_info(Forward(local_port, host, port), local_port)
                             if f.get("local_port") == local_port else f for f in self.forwards]
        self._save_locked()

    def _on_reconnected(self) -> None:
        resumer = self._resumer
        if resumer is not None:
            resumer.reconnected()

    def _step(self, state: State) -> None:
        """Go on to the next state of the open, unless the tunnel was closed meanwhile."""
        if not self._set_state(state):
            raise TunnelError(f"tunnel {self.name} was closed while opening")

    def _on_notice(self, message: str) -> None:
        self.notices.append(message)
        log.info("tunnel %s: %s", self.name, message)
        self._emit("notice")

    def _on_hop(self, index: int, hop: ResolvedHop) -> None:
        self.hop_index = index
        self._emit("hop")

    def run_remote(self, script: str, *args: str, timeout: float | None = None
                   ) -> tuple[int, str, str]:
        """Run a shell script (given on stdin, never in argv) on the target."""
        if self._backend is None:
            raise TunnelError("the tunnel is not connected")
        command = " ".join([detect.REMOTE_SHELL, "--", *map(shlex.quote, args)])
        limit = timeout if timeout is not None else max(30.0, self.settings.launch_timeout)
        return self._backend.run(command, timeout=limit, stdin=script)

    def _find_remote(self) -> detect.RemoteServer:
        return detect.find_server(self.run_remote, self.chain[-1].alias, self.spec.remote_port,
                                  launch=self.spec.launch,
                                  launch_timeout=self.settings.launch_timeout,
                                  on_launch=lambda: self._emit("launch"),
                                  base_url=self.spec.base_url_for(self.name))

    def loss_reason(self) -> str:
        """Why the tunnel ended, naming the hop where it can."""
        if self.error is not None:
            return self.error.message
        return "the tunnel was closed"

    def _fail(self, error: TunnelError | None) -> None:
        with self._lock:
            if self.state in TERMINAL:
                return
            self.error = error
            self.state = State.FAILED
            self.since = time.time()
            self.attempt, self.next_try = 0, None
        # a tunnel that was up keeps a record of why it failed (until close or cleanup);
        # a failed open reports its error to whoever opened it and leaves nothing
        self._teardown(keep_record=self.supervised and error is not None)
        self._emit("state")

    @property
    def supervised(self) -> bool:
        """Whether the tunnel got as far as ready (and was then kept alive)."""
        return self._supervisor is not None

    def _teardown(self, keep_record: bool = False) -> None:
        if self._supervisor is not None:
            self._supervisor.stop()
        with self._lock:
            resumer, self._resumer = self._resumer, None
        if resumer is not None:  # first: it ends the helper through the connection
            with contextlib.suppress(Exception):
                resumer.close()
        if self._backend is not None:  # also cuts a reconnect under way
            with contextlib.suppress(Exception):
                self._backend.close()
        if self._supervisor is not None:
            self._supervisor.join()
        if self.registry is not None and self._claimed:
            with contextlib.suppress(Exception):
                if keep_record:
                    record = self.to_dict()
                    if resumer is not None:
                        # the connection is lost, so its helper may still run on the
                        # target: cleanup ends it once this process is gone
                        record["resume"] = resumer.summary()
                    self.registry.save(record, owner_pid=self.pid)
                else:
                    self.registry.remove(self.name, owner_pid=self.pid)
        self._done.set()

    def reconnect(self) -> None:
        """Drop the SSH connection and build it again now (same local ports and URL)."""
        if self.state in TERMINAL or self._supervisor is None:
            raise TunnelError(f"tunnel {self.name} is {self.state.value}: open it again instead")
        self._supervisor.reconnect_now()

    def close(self) -> None:
        """Stop forwarding and disconnect; idempotent."""
        with self._lock:
            if self.state is State.CLOSED:
                return
            self.state = State.CLOSED
            self.since = time.time()
            self.attempt, self.next_try = 0, None
        if isinstance(self.ask, Mailbox):
            self.ask.close()  # a question waiting there ends now, its door with it
        # again after a failure: removes the record kept to say why; but a record that
        # names a remote kernel not ended (its target was unreachable) stays for cleanup
        self._teardown(keep_record=self.kernel is not None)
        self._emit("state")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the tunnel is closed or failed; False if ``timeout`` came first."""
        return self._done.wait(timeout)

    def alive(self) -> bool:
        """Whether the connection is up (the tunnel is ready and every hop connected)."""
        return self.state is State.READY and self._backend is not None and self._backend.alive()

    def __enter__(self) -> Tunnel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Tunnel {self.name} {' -> '.join(self.hops)} {self.state.value}>"
