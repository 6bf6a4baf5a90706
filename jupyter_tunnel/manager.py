"""TunnelManager: opens, tracks and closes this process's tunnels; configurable traits."""

from __future__ import annotations

import atexit
import builtins
import contextlib
import os
import signal
import threading
import time
import weakref
from typing import Any

from traitlets import Bool, Enum, Float, Int, Unicode, default
from traitlets.config import LoggingConfigurable

from . import procinfo
from .cleanup import cleanup
from .errors import NotOwner, TunnelError, TunnelNotFound
from .login.questions import Ask
from .registry import Registry
from .spec import TunnelSpec, check_name
from .sshconfig import SSHConfig, resolve_chain
from .state import Settings, State
from .tunnel import EventCallback, Tunnel


class TunnelManager(LoggingConfigurable):
    """Owns the tunnels of one process and records them in the user's registry."""

    ssh_config = Unicode(
        "",
        help="""OpenSSH client config file used to resolve hosts (HostName, User, Port,
        IdentityFile, ProxyJump, UserKnownHostsFile, StrictHostKeyChecking, ServerAlive*,
        ConnectTimeout). Empty means ~/.ssh/config followed by /etc/ssh/ssh_config, as ssh does;
        a file given here is read alone, as with `ssh -F`.""",
    ).tag(config=True)

    connect_timeout = Float(
        10.0,
        help="Seconds to wait for each hop to accept the TCP connection and the SSH handshake, "
        "unless the ssh config sets ConnectTimeout for that host.",
    ).tag(config=True)

    keepalive_interval = Int(
        15,
        help="Seconds between SSH keepalive messages on every hop, unless the ssh config sets "
        "ServerAliveInterval for that host. 0 turns keepalives off.",
    ).tag(config=True)

    keepalive_count_max = Int(
        3,
        help="Unanswered keepalives after which a hop counts as dead, unless the ssh config "
        "sets ServerAliveCountMax.",
    ).tag(config=True)

    ready_timeout = Float(
        15.0,
        help="Seconds to wait for the remote Jupyter to answer api/status through the tunnel "
        "before the open fails.",
    ).tag(config=True)

    launch_timeout = Float(
        60.0,
        help="Seconds to wait for a JupyterLab started with --launch to come up on the remote.",
    ).tag(config=True)

    health_interval = Float(
        10.0,
        help="Seconds between checks that the remote Jupyter answers api/status through the "
        "tunnel. When it stops answering while SSH is up, the tunnel turns 'degraded' and looks "
        "for the server again (a restarted server has a new token). 0 turns the checks off.",
    ).tag(config=True)

    reconnect_max_delay = Float(
        30.0,
        help="Longest wait in seconds between two reconnect attempts (the wait doubles from "
        "1 s up to this, with jitter). While the first hop is unreachable, a TCP probe each "
        "second ends the wait as soon as it answers.",
    ).tag(config=True)

    reconnect_give_up = Float(
        0.0,
        help="Seconds after which a tunnel that cannot reconnect gives up and fails. 0 means "
        "never: it keeps trying until closed. A refused key, a changed host key or forwarding "
        "refused by a server stop it at once either way.",
    ).tag(config=True)

    hold_timeout = Float(
        20.0,
        help="Seconds a new local connection waits for a lost SSH connection to come back "
        "before it is closed (instead of being refused at once while reconnecting).",
    ).tag(config=True)

    resume = Bool(
        True,
        help="Carry the Jupyter forward and --forward forwards as resumable connections: a small "
        "helper of ours on the target (run by the remote Jupyter's Python, ended with the "
        "tunnel) holds their far ends, so an outage is only a pause for them, nothing lost. "
        "When the target has no usable Python the tunnel says so once and forwards as before; "
        "off (--no-resume), a cut connection is reset.",
    ).tag(config=True)

    resume_outage = Float(
        900.0,
        help="Seconds a resumable connection is held through an outage; after that both ends "
        "are reset (never ended as if complete).",
    ).tag(config=True)

    resume_connection_buffer = Int(
        16 * 2**20,
        help="Bytes a resumable connection may have sent and not yet acknowledged; beyond "
        "that it pauses (and one whose buffer would overflow is reset at both ends).",
    ).tag(config=True)

    resume_tunnel_buffer = Int(
        256 * 2**20,
        help="The same for all of a tunnel's resumable connections together.",
    ).tag(config=True)

    answer_timeout = Float(
        120.0,
        help="Seconds a hop's question (a one-time code, a password, a key's passphrase) "
        "waits for an answer from whoever opened the tunnel (the terminal, the panel, the "
        "notebook) before the open fails; also on a reconnect. 0 means no limit (the "
        "server's LoginGraceTime still applies).",
    ).tag(config=True)

    backend = Enum(
        ["auto", "openssh", "sshtunnel"],
        "auto",
        help="How SSH is spoken. 'openssh': the system ssh client carries the tunnel (one "
        "ControlMaster per chain of hops, shared by every tunnel to the same hosts, so a second "
        "tunnel needs no new login; the data moves in ssh, as fast as ssh -J -L). 'sshtunnel': "
        "in process with paramiko and sshtunnel (nothing to install). 'auto': openssh when an "
        "ssh client is on the PATH, else sshtunnel (see the README's Performance section). "
        "The default comes from the environment variable JUPYTER_TUNNEL_BACKEND when set.",
    ).tag(config=True)

    @default("backend")
    def _default_backend(self) -> str:
        return os.environ.get("JUPYTER_TUNNEL_BACKEND") or "auto"

    registry_dir = Unicode(
        "",
        help="Folder of the tunnel registry. Empty means <jupyter runtime dir>/jupyter_tunnel.",
    ).tag(config=True)

    owner = Unicode("python", help="What kind of process owns the tunnels: cli, server, kernel.")

    @default("log")
    def _default_log(self) -> Any:
        import logging

        return logging.getLogger("jupyter_tunnel")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._tunnels: dict[str, Tunnel] = {}
        self._lock = threading.Lock()
        self.registry = Registry(self.registry_dir or None)
        ref, pid = weakref.ref(self), os.getpid()
        # at exit, close what this process opened (not in a forked child: its copies of
        # the tunnels belong to the parent)
        atexit.register(lambda: os.getpid() == pid and (m := ref()) is not None
                        and m.close_all(timeout=3.0))

    def settings(self) -> Settings:
        """The engine settings from the traits."""
        return Settings(
            connect_timeout=self.connect_timeout,
            keepalive_interval=self.keepalive_interval,
            keepalive_count_max=self.keepalive_count_max,
            ready_timeout=self.ready_timeout,
            launch_timeout=self.launch_timeout,
            backend=self.backend,
            health_interval=self.health_interval,
            reconnect_max_delay=self.reconnect_max_delay,
            reconnect_give_up=self.reconnect_give_up,
            hold_timeout=self.hold_timeout,
            resume=self.resume,
            resume_outage=self.resume_outage,
            resume_connection_buffer=self.resume_connection_buffer,
            resume_tunnel_buffer=self.resume_tunnel_buffer,
            answer_timeout=self.answer_timeout,
        )

    def prepare(self, spec: TunnelSpec, on_event: EventCallback | None = None,
                ask: Ask | None = None) -> Tunnel:
        """Resolve the spec and build a tunnel, not yet opened.  ``ask`` answers the hops'
        questions (a one-time code, a password); without it they fail with AnswerNeeded."""
        config = SSHConfig(spec.ssh_config or self.ssh_config or None)
        chain = resolve_chain(spec.target, spec.via, config)
        name = spec.name or self.registry.unique_name(spec.default_name())
        tunnel = Tunnel(spec, chain, name, settings=self.settings(), registry=self.registry,
                        owner=self.owner, ask=ask)
        if on_event is not None:
            tunnel.on_event(on_event)
        return tunnel

    def open(self, spec: TunnelSpec, on_event: EventCallback | None = None,
             ask: Ask | None = None) -> Tunnel:
        """Open a tunnel and wait until it is ready; raise a :class:`TunnelError` if it cannot.
        ``ask``: see :meth:`prepare`."""
        tunnel = self.prepare(spec, on_event, ask)
        self.start(tunnel)
        return tunnel

    def start(self, tunnel: Tunnel) -> None:
        """Open a prepared tunnel (blocking) and keep track of it."""
        tunnel.claim()  # may rename it (beast-2) when another process took the name meanwhile
        with self._lock:
            self._tunnels[tunnel.name] = tunnel
        tunnel.on_event(self._forget_closed)
        try:
            tunnel.open()
        except BaseException:
            with self._lock:
                self._tunnels.pop(tunnel.name, None)
            raise
        self.log.info("tunnel %s ready on 127.0.0.1:%s", tunnel.name, tunnel.local_port)

    def _forget_closed(self, tunnel: Tunnel, event: str) -> None:
        if tunnel.state in (State.CLOSED, State.FAILED):
            with self._lock:
                if self._tunnels.get(tunnel.name) is tunnel:
                    del self._tunnels[tunnel.name]

    def get(self, name: str) -> Tunnel:
        """A tunnel of this process by name."""
        with self._lock:
            tunnel = self._tunnels.get(name)
        if tunnel is None:
            raise TunnelNotFound(f"no tunnel named {name!r} in this process")
        return tunnel

    def list(self) -> list[dict[str, Any]]:
        """Every tunnel of the user (this process's live view first, then the registry)."""
        with self._lock:
            mine = {name: t.to_dict() for name, t in self._tunnels.items()}
        records = []
        for record in self.registry.all():
            if record["name"] in mine:
                continue
            if record["orphaned"] and record.get("state") != "failed":
                record["state"] = "orphaned"
            records.append(record)
        return sorted([*mine.values(), *records], key=lambda r: r["name"])

    def status(self, name: str) -> dict[str, Any]:
        """One tunnel's JSON, from this process or the registry."""
        check_name(name)
        for record in self.list():
            if record["name"] == name:
                return record
        raise TunnelNotFound(f"no tunnel named {name!r}; 'jupyter tunnel list' shows them all")

    def close(self, name: str, timeout: float = 10.0) -> dict[str, Any]:
        """Close a tunnel of this process, or end the detached CLI process that owns it."""
        check_name(name)
        with self._lock:
            tunnel = self._tunnels.pop(name, None)
        if tunnel is not None:
            tunnel.close()
            return tunnel.to_dict()
        record = self.registry.read(name)
        if record is None:
            raise TunnelNotFound(f"no tunnel named {name!r}; 'jupyter tunnel list' shows them all")
        pid, started = int(record.get("pid", 0)), record.get("started")
        if record.get("state") == "failed":  # only a note of why it failed: nothing runs
            self.registry.remove(name, owner_pid=pid)
            return record
        if not procinfo.is_alive(pid, started):
            # an orphan: remove it and what it left running
            cleanup(self.registry, only=name, backend=self.backend)
            record["state"] = "closed"
            return record
        if record.get("owner") != "cli" or not _is_our_cli(pid):
            raise NotOwner(
                f"tunnel {name!r} belongs to a {record.get('owner')} process (pid {pid}); close it "
                "there (the notebook or the JupyterLab panel that opened it)")
        with contextlib.suppress(ProcessLookupError):  # it may end on its own just now
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and procinfo.is_alive(pid, started):
            time.sleep(0.05)
        if procinfo.is_alive(pid, started):
            raise TunnelError(f"the process of tunnel {name!r} (pid {pid}) did not stop within "
                              f"{timeout:g} s")
        self.registry.remove(name, owner_pid=pid)
        record["state"] = "closed"
        return record

    def cleanup(self) -> dict[str, builtins.list[dict[str, Any]]]:
        """Remove what crashed tunnels of this user left behind; see :mod:`.cleanup`."""
        report = cleanup(self.registry, backend=self.backend)
        for item in report["removed"]:
            self.log.info("cleanup: removed tunnel record %s: %s", item["name"], item["why"])
        for item in report["ended"]:
            self.log.info("cleanup: ended pid %s of tunnel %s", item["pid"], item["tunnel"])
        return report

    def close_all(self, timeout: float = 10.0) -> builtins.list[dict[str, Any]]:
        """Close every tunnel this process owns, all at once (at exit time is short), and
        remove the records it kept of tunnels that failed."""
        with self._lock:
            names = list(self._tunnels)
        closed: builtins.list[dict[str, Any]] = []

        def close(name: str) -> None:
            with contextlib.suppress(TunnelError):
                closed.append(self.close(name))

        threads = [threading.Thread(target=close, args=(n,), daemon=True) for n in names]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        pid = os.getpid()
        for record in self.registry.all():
            if record.get("pid") == pid and record.get("state") == "failed":
                self.registry.remove(record["name"], owner_pid=pid)
        return closed

    def tunnels(self) -> builtins.list[Tunnel]:
        """This process's tunnels."""
        with self._lock:
            return [t for t in self._tunnels.values() if t.state is not State.CLOSED]


def _is_our_cli(pid: int) -> bool:
    """Whether ``pid`` runs the jupyter_tunnel command (never signal a process that is not ours)."""
    argv = procinfo.cmdline(pid) or []
    return any("jupyter_tunnel" in a or "jupyter-tunnel" in a for a in argv)
