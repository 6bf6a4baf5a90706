"""What the REST API does, without HTTP: read requests, check targets, track the server's tunnels.

The handlers stay thin: they authenticate, call this service off the event loop, and map
errors.  Everything here is blocking and thread safe; nothing here imports tornado.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from fnmatch import fnmatchcase
from typing import Any

from .errors import (
    ConfigError,
    NoQuestionWaiting,
    SpecError,
    TunnelError,
    TunnelExists,
    TunnelNotFound,
)
from .login.door import door_path, knock
from .login.mailbox import Mailbox, check_answer, check_question_id, deliver
from .manager import TunnelManager
from .rest_errors import TargetNotAllowed
from .rest_kernels import KernelsAPI
from .serve_rules import served
from .spec import Hop, TunnelSpec, build_spec, check_name
from .sshconfig import ResolvedHop, SSHConfig
from .state import State
from .tunnel import Tunnel

log = logging.getLogger("jupyter_tunnel")

#: the only fields a request to open a tunnel may carry: no ssh options, commands or paths
OPEN_FIELDS = ("target", "via", "name", "local_port", "remote_port", "launch", "wait")

_ENDED = (State.FAILED, State.CLOSED)


def parse_open_request(body: Any) -> tuple[TunnelSpec, bool]:
    """The spec and the ``wait`` flag of a ``POST tunnels`` body; :class:`SpecError` if bad."""
    if not isinstance(body, dict):
        raise SpecError('the request body must be a JSON object such as '
                        '{"target": "beast", "via": ["unicorn"]}')
    unknown = sorted(set(body) - set(OPEN_FIELDS))
    if unknown:
        raise SpecError(f"unknown field {unknown[0]!r}: a tunnel request takes only "
                        f"{', '.join(OPEN_FIELDS)}")
    target = body.get("target")
    if not isinstance(target, str) or not target.strip():
        raise SpecError("'target' is required: the host that runs Jupyter, such as \"beast\"")
    via = body.get("via")
    if via is None:
        via = []
    elif isinstance(via, str):
        via = [via]
    elif not isinstance(via, list) or not all(isinstance(v, str) for v in via):
        raise SpecError("'via' must be a list of jump host names, such as [\"unicorn\"]")
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise SpecError("'name' must be a string")
    ports = {key: _port_field(body, key) for key in ("local_port", "remote_port")}
    flags = {key: _flag_field(body, key) for key in ("launch", "wait")}
    spec = build_spec(target, via, name=name or None, local_port=ports["local_port"],
                      remote_port=ports["remote_port"], launch=flags["launch"])
    return spec, flags["wait"]


def _port_field(body: dict[str, Any], key: str) -> int | str | None:
    value = body.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise SpecError(f"'{key}' must be a port number from 1 to 65535")
    return value  # build_spec checks the range and says which port is wrong


def _flag_field(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise SpecError(f"'{key}' must be true or false")
    return value


def hop_allowed(hop: Hop, patterns: list[str] | None, config_hosts: list[str]) -> bool:
    """Whether the server may connect to ``hop``.

    ``patterns`` None: a Host of the ssh config, or a hop given with its user (``user@host``).
    Otherwise the hop's host (or ``user@host``, for a pattern with ``@``) must match one of
    the shell-style patterns.
    """
    host = hop.host.lower()
    if patterns is None:
        return hop.user is not None or host in {h.lower() for h in config_hosts}
    for pattern in patterns:
        if "@" in pattern:
            if hop.user is not None and fnmatchcase(f"{hop.user}@{host}", pattern.lower()):
                return True
        elif fnmatchcase(host, pattern.lower()):
            return True
    return False


#: failed opens kept to show why, per server
MAX_FAILED = 20


class TunnelService(KernelsAPI):
    """The tunnels of one Jupyter server, as the REST API sees them.

    Besides the manager's view it keeps the tunnels this server started that failed, so
    the panel can show why until the user dismisses them (``DELETE``).
    """

    def __init__(self, manager: TunnelManager, allowed_targets: list[str] | None = None,
                 max_opens: int = 8, serve_under: str | None = None) -> None:
        self.manager = manager
        #: ``{base_url}jupyter-tunnel/lab/`` (None: cannot serve): a launched server's base
        #: URL is this plus its tunnel's name, so that :mod:`.serve` can serve it
        self.serve_under = serve_under
        self.allowed_targets = None if allowed_targets is None else list(allowed_targets)
        #: the handlers' blocking calls (listing, closing), never run on the event loop
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="jupyter-tunnel")
        #: opens (seconds each), apart: hanging hops never hold up listing or closing
        self._opener = ThreadPoolExecutor(max_workers=max_opens,
                                          thread_name_prefix="jupyter-tunnel-open")
        self._lock = threading.Lock()
        #: tunnels this server started and not closed: opening, open, or failed
        self._mine: list[Tunnel] = []
        #: tunnels closed by a request while still opening: closed again once the open ends
        self._cancelled: set[int] = set()
        #: why a tunnel failed when the engine gave no TunnelError (a bug, logged)
        self._crashes: dict[int, str] = {}
        #: background opens by tunnel id, and those already handed to the manager
        self._futures: dict[int, Future[None]] = {}
        self._started: set[int] = set()
        self._stopped = False
        #: one install at a time per target (two would write the same kernelspecs)
        self._installing: dict[str, threading.Lock] = {}

    # reading ---------------------------------------------------------------
    def config_hosts(self) -> list[str]:
        """The concrete Host names of the ssh config the manager uses."""
        return SSHConfig(self.manager.ssh_config or None).hosts()

    def hosts(self) -> list[str]:
        """Host names to suggest: those of the ssh config that may be reached from here."""
        hosts = self.config_hosts()
        if self.allowed_targets is None:
            return hosts
        allowed = [h for h in hosts if hop_allowed(Hop(h), self.allowed_targets, hosts)]
        literal = [p for p in self.allowed_targets if not any(c in p for c in "*?[@")]
        return allowed + [p for p in literal if p not in allowed]

    def view(self, tunnel: Tunnel) -> dict[str, Any]:
        """The tunnel's JSON, with a reason even when the engine failed without one."""
        record = tunnel.to_dict()
        if record.get("state") == State.FAILED.value and record.get("error") is None:
            why = self._crashes.get(id(tunnel), "the open ended unexpectedly")
            record["error"] = {"error": f"{why}; see the Jupyter server's log",
                               "kind": "error", "hop": None}
        return self._with_served(record, {tunnel.name})

    def _with_served(self, record: dict[str, Any], own: set[str]) -> dict[str, Any]:
        """``record`` with ``served_url`` (the path this server serves it at, or None) and
        ``served_why`` (why it cannot be served, or "")."""
        record["served_url"], record["served_why"] = served(
            record, self.serve_under, record.get("name") in own)
        return record

    def served_tunnel(self, name: str) -> Tunnel:
        """A tunnel of this server's manager by name (:class:`TunnelNotFound` if none)."""
        check_name(name)
        return self.manager.get(name)

    def list(self) -> list[dict[str, Any]]:
        """Every tunnel of the user (the registry), plus this server's opening and failed ones."""
        records = self.manager.list()
        names = {r["name"] for r in records}
        with self._lock:
            self._mine = [t for t in self._mine if t.state is not State.CLOSED]
            extra = [t for t in self._mine if t.name not in names]
        own = {t.name for t in self.manager.tunnels()}
        records = [self._with_served(r, own) for r in records] + [self.view(t) for t in extra]
        return sorted(records, key=lambda r: str(r["name"]))

    def status(self, name: str) -> dict[str, Any]:
        """One tunnel's JSON."""
        check_name(name)
        for record in self.list():
            if record["name"] == name:
                return record
        raise TunnelNotFound(f"no tunnel named {name!r}")

    # opening ---------------------------------------------------------------
    def check_allowed(self, spec: TunnelSpec) -> None:
        """Raise :class:`TargetNotAllowed` unless every hop may be reached from this server."""
        try:
            hosts = self.config_hosts()
        except ConfigError:
            hosts = []  # the open reports the config problem itself
        for hop in spec.chain:
            if hop_allowed(hop, self.allowed_targets, hosts):
                continue
            if self.allowed_targets is None:
                why = ("this server reaches only the hosts of its ssh config, or a host given "
                       "with its user (user@host)")
            elif not self.allowed_targets:
                why = "this server is configured to reach no hosts (allowed_targets is empty)"
            else:
                why = ("this server reaches only " + ", ".join(self.allowed_targets)
                       + " (TunnelExtensionApp.allowed_targets)")
            raise TargetNotAllowed(f"{hop} is not allowed: {why}", hop=str(hop))

    def check_resolved(self, tunnel: Tunnel) -> None:
        """With an operator's list, every hop of the resolved chain must be on it, including
        jump hosts that ProxyJump in the ssh config adds (the request never named them)."""
        self.check_chain(tunnel.chain)

    def check_chain(self, chain: Sequence[ResolvedHop]) -> None:
        """:meth:`check_resolved` for a chain resolved without a tunnel."""
        if self.allowed_targets is None:
            return  # the user's own ssh config decides its ProxyJump hops
        for hop in chain:
            if not hop_allowed(Hop(host=hop.alias.lower(), user=hop.user),
                               self.allowed_targets, []):
                raise TargetNotAllowed(
                    f"{hop.alias} (a jump host of {chain[-1].alias} in the ssh config) is "
                    "not allowed: this server reaches only " + ", ".join(self.allowed_targets)
                    + " (TunnelExtensionApp.allowed_targets)", hop=hop.alias)

    def begin(self, spec: TunnelSpec) -> tuple[Tunnel, Future[None]]:
        """Check, name and record a tunnel, and start opening it in the background.

        Returns at once with the tunnel in state ``connecting`` (its state then advances
        to ``ready`` or ``failed``) and the future of the open.  A request the server must
        refuse raises here.
        """
        if self._stopped:
            raise TunnelError("the Jupyter server is shutting down")
        self.check_allowed(spec)
        with self._lock:
            busy = {t.name for t in self._mine if t.state is not State.FAILED}
            if spec.name and spec.name in busy:
                raise TunnelExists(f"a tunnel named {spec.name!r} is already open here; close "
                                   "it first or choose another name")
            if not spec.name:
                spec = dataclasses.replace(spec, name=self._free_name(spec.default_name(), busy))
            if spec.launch and spec.jupyter and self.serve_under:
                # the server it starts gets the base URL this server serves it under
                spec = dataclasses.replace(spec, serve_under=self.serve_under)
            # no person at this server: its tunnels' questions wait for POST …/answer (or
            # for jupyter tunnel answer, through the door)
            tunnel = self.manager.prepare(spec, ask=Mailbox(self.manager.answer_timeout + 5))
            self.check_resolved(tunnel)  # ProxyJump lines may have added hops
            claim = getattr(tunnel, "claim", None)
            if claim is not None:
                claim()  # in the registry now: a name held elsewhere fails here, with 409
            # a failed tunnel of the same name is replaced by the new attempt, and only the
            # latest failures are kept to be shown (a client cannot grow the list forever)
            self._mine = [t for t in self._mine if t.name != tunnel.name] + [tunnel]
            failed = [t for t in self._mine if t.state is State.FAILED]
            for old in failed[:max(0, len(failed) - MAX_FAILED)]:
                self._mine.remove(old)
            self._crashes = {k: v for k, v in self._crashes.items()
                             if any(id(t) == k for t in self._mine)}
            # submitted under the lock, which _open takes first: it finds its future
            future = self._futures[id(tunnel)] = self._opener.submit(self._open, tunnel)
        return tunnel, future

    def outcome(self, tunnel: Tunnel) -> dict[str, Any]:
        """The JSON of a tunnel whose open ended; its error if the open failed."""
        if tunnel.state is State.FAILED:
            raise tunnel.error or TunnelError(self.view(tunnel)["error"]["error"])
        return self.view(tunnel)

    def _free_name(self, base: str, busy: set[str]) -> str:
        for n in range(1, 1000):
            name = base if n == 1 else f"{base[:58]}-{n}"
            if name not in busy and self.manager.registry.unique_name(name) == name:
                return name
        raise TunnelExists(f"too many tunnels named {base}-N")

    def _open(self, tunnel: Tunnel) -> None:
        with self._lock:
            go = id(tunnel) not in self._cancelled
            if go:
                self._started.add(id(tunnel))
        try:
            if go:
                self.manager.start(tunnel)
        except TunnelError as exc:
            log.info("tunnel %s failed: %s", tunnel.name, exc.message)
        except Exception as exc:
            self._crashes[id(tunnel)] = f"unexpected {type(exc).__name__}: {exc}"
            log.exception("tunnel %s: unexpected error while opening", tunnel.name)
        finally:
            with self._lock:
                cancelled = id(tunnel) in self._cancelled
                self._cancelled.discard(id(tunnel))
                self._started.discard(id(tunnel))
                self._futures.pop(id(tunnel), None)
            if cancelled:
                self._end(tunnel)

    @staticmethod
    def _end(tunnel: Tunnel) -> None:
        """Close a tunnel whose open was cancelled, whatever state the open left it in."""
        tunnel.close()
        backend = getattr(tunnel, "backend", None)
        if backend is not None and backend.alive():
            # closed while opening, the open went on regardless: stop what it set up
            log.warning("tunnel %s: closed while opening; stopping its connection", tunnel.name)
            tunnel._teardown()

    # answering -------------------------------------------------------------
    def answer(self, name: str, body: Any) -> dict[str, Any]:
        """Answer the question a tunnel of this server waits for (its ``prompt``); the
        tunnel's JSON.  The answer goes to the waiting login and is kept nowhere."""
        check_name(name)
        if not isinstance(body, dict) or set(body) != {"id", "answer"}:
            raise SpecError('the request body must be {"id": "<the prompt\'s id>", '
                            '"answer": "<the answer>"}')
        question_id, answer = check_question_id(body["id"]), check_answer(body["answer"])
        with self._lock:
            mine = next((t for t in self._mine if t.name == name and t.state not in _ENDED),
                        None)
        if mine is None:  # a tunnel of another process of the user (a --detach open)
            record = self.status(name)  # TunnelNotFound: 404
            prompt = record.get("prompt") or {}
            if prompt.get("id") != question_id:
                raise NoQuestionWaiting(f"tunnel {name} waits for no answer now" if not prompt
                                        else f"that question of tunnel {name} no longer waits")
            knock(door_path(self.manager.registry.path, name), question_id, answer, name)
            return record
        deliver(mine, question_id, answer)
        return self.view(mine)

    # remote kernels --------------------------------------------------------
    def run_slow(self, fn: Any, *args: Any) -> Future[Any]:
        """Run a call that logs in to hosts (seconds, or a hop's timeout) in the opening
        threads, apart from listing and closing."""
        if self._stopped:
            raise TunnelError("the Jupyter server is shutting down")
        return self._opener.submit(fn, *args)

    # closing ---------------------------------------------------------------
    def close(self, name: str) -> dict[str, Any]:
        """Close a tunnel (or dismiss a failed one of this server); its last JSON."""
        check_name(name)
        with self._lock:
            mine = next((t for t in self._mine if t.name == name), None)
            if mine is not None:
                self._mine.remove(mine)
                pending = mine.state not in _ENDED and id(mine) in self._futures
                if pending:
                    self._cancelled.add(id(mine))  # the open ends it, whenever it returns
                started = id(mine) in self._started
        if mine is None:
            return self.manager.close(name)
        if mine.state in _ENDED:
            record = self.view(mine)  # a failed open, dismissed
            self._crashes.pop(id(mine), None)
            return record
        if pending and not started:
            mine.close()  # it never starts (_open sees the cancel); its claimed record goes now
            return self.view(mine)
        with contextlib.suppress(TunnelNotFound):
            if self.manager.get(name) is mine:
                return self.manager.close(name)
        mine.close()
        return self.view(mine)

    def shutdown(self) -> None:
        """Close every tunnel this server opened (the server is stopping)."""
        self._stopped = True
        with self._lock:
            mine, self._mine = self._mine, []
            self._cancelled.update(id(t) for t in mine if t.state not in _ENDED)
        self.manager.close_all()
        for tunnel in mine:
            with contextlib.suppress(Exception):
                tunnel.close()
        self._opener.shutdown(wait=False, cancel_futures=True)
        self.executor.shutdown(wait=False, cancel_futures=True)
