"""The default backend: hops chained in one process, forwards served by sshtunnel.

sshtunnel's ``SSHTunnelForwarder`` provides the listeners (:mod:`.sshtunnel_listen`); it
never logs in itself.  Each listener is bound to 127.0.0.1 and outlives the SSH
connection: after a loss, :meth:`SSHTunnelBackend.connect` builds a new chain and
the same listeners carry on; a connection arriving meanwhile waits for it (up to
``hold_timeout``) instead of being refused.  Connections are relayed by our own
loop (:mod:`.relay`): no polling, TCP_NODELAY, half-close passed through.  The backend
keeps track of the connections being relayed: when the SSH connection is dropped
(``disconnect``, ``close``) none is left behind, and their local ends are reset, not
ended cleanly (what was coming through them is lost).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import paramiko
import sshtunnel

from ..errors import ForwardingRefused, HopUnreachable, RemotePortRefused, TunnelError
from ..login.questions import Ask
from ..sshconfig import ResolvedHop
from . import memory, tuning
from .base import Acceptor, DeadCallback, NoticeCallback, ProgressCallback
from .chain import HopChain
from .counters import Counters
from .relay import abort, relay
from .sshtunnel_listen import Forwarder, PlaceholderKey, Route, Target, detach
from .streamlocal import open_streamlocal

log = logging.getLogger("jupyter_tunnel")
# sshtunnel's own messages (we raise typed errors instead): silenced, once
_sshtunnel_log = logging.getLogger("jupyter_tunnel.sshtunnel")
_sshtunnel_log.addHandler(logging.NullHandler())
_sshtunnel_log.propagate = False

#: seconds a relay gets to end by itself once its channel closed, before it is aborted
RELAY_GRACE = 0.5


@dataclass
class _Reverse:
    """A remote forward: the target listens on ``bind:port``; we connect to ``host:to_port``."""

    bind: str
    port: int  # as bound (the server's choice when 0 was asked for)
    host: str
    to_port: int


class SSHTunnelBackend:
    """Hops in one process (:class:`HopChain`) and sshtunnel listeners that outlive them."""

    def __init__(self, hold_timeout: float = 20.0) -> None:
        memory.limit_arenas()  # before any relay thread: see memory's docstring
        #: seconds a new connection waits for a lost SSH connection to come back
        self.hold_timeout = hold_timeout
        #: takes accepted connections over instead of channels (resumable streams)
        self.acceptor: Acceptor | None = None
        self.counters = Counters()
        self.chain: HopChain | None = None
        self._connecting: HopChain | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._forwarders: list[Forwarder] = []
        self._targets: dict[int, Target] = {}
        #: connections being relayed now: (local socket, channel), under _relays_cond
        self._relays: dict[int, tuple[socket.socket, Any]] = {}
        self._relays_cond = threading.Condition()
        self._reverse: dict[int, _Reverse] = {}
        #: which chain holds each remote forward now (asked for again after a reconnect)
        self._granted: dict[int, HopChain] = {}

    # the SSH connection -------------------------------------------------------
    def connect(self, chain: list[ResolvedHop], progress: ProgressCallback | None = None,
                timeout: float = 10.0, notice: NoticeCallback | None = None,
                ask: Ask | None = None) -> None:
        """Connect every hop (again, after a loss: the old chain is dropped first); the
        listeners stay bound throughout.  A hop's questions go to ``ask`` (see
        :mod:`.paramiko_login`); without it they fail with :class:`AnswerNeeded`."""
        attempt = HopChain()
        with self._cond:
            if self._closed:
                raise HopUnreachable("the tunnel was closed")
            old, self.chain, self._connecting = self.chain, None, attempt
        if old is not None:
            self._drop(old)
        try:
            attempt.connect(chain, progress, timeout, notice, ask)
        finally:
            with self._cond:
                self._connecting = None
        with self._cond:
            if self._closed:
                attempt.close()
                raise HopUnreachable("the tunnel was closed while connecting")
            self.chain = attempt
            self._cond.notify_all()

    def disconnect(self) -> None:
        """Drop the hops' connections; listeners stay and new connections wait."""
        with self._cond:
            old, self.chain = self.chain, None
        if old is not None:
            self._drop(old)

    def _drop(self, chain: HopChain) -> None:
        """Close ``chain``, then end what was being relayed through it."""
        transports = set(chain.transports)
        chain.close()
        self._end_relays(transports)

    def _live_chain(self) -> HopChain:
        chain = self.chain
        if chain is None or not chain.alive():
            raise HopUnreachable("the SSH connection is down")
        return chain

    def keepalive(self, interval: int, count_max: int, on_dead: DeadCallback) -> None:
        """Watch every hop with keepalives; see :meth:`HopChain.start_keepalive`."""
        self._live_chain().start_keepalive(interval, count_max, on_dead)

    def run(self, command: str, timeout: float = 30.0, stdin: str | None = None
            ) -> tuple[int, str, str]:
        """Run a command on the last hop."""
        return self._live_chain().exec(command, timeout, stdin)

    def set_acceptor(self, acceptor: Acceptor | None) -> None:
        """Hand accepted local connections to ``acceptor`` instead of opening channels."""
        self.acceptor = acceptor

    def unix_link(self, path: str, timeout: float = 10.0) -> socket.socket:
        """A connected socket carried to the Unix socket ``path`` on the last hop (a
        ``direct-streamlocal`` channel, relayed like a forwarded connection);
        :class:`HopUnreachable` while the connection is down."""
        chain = self._live_chain()
        hop = chain.hops[-1]
        try:
            chan = open_streamlocal(chain.transports[-1], path, timeout)
        except paramiko.ChannelException as exc:
            raise ForwardingRefused(f"{hop.label} refused to connect to {path}: {exc}",
                                    hop=hop.alias) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise HopUnreachable(f"lost {hop.label}: {exc}", hop=hop.alias) from None
        ours, theirs = socket.socketpair()
        # not counted: the streams it carries are, at the near end (Tunnel.to_dict)
        threading.Thread(target=self.relay_connection,
                         args=(theirs, chan, True, f"link to {path}", False),
                         daemon=True, name="jupyter-tunnel-link").start()
        return ours

    def open_channel(self, address: tuple[str, int], origin: tuple[str, int]) -> Any:
        """A ``direct-tcpip`` channel from the last hop to ``address``; while the connection
        is down (or dies under the attempt), wait up to ``hold_timeout`` for it to come back."""
        deadline = time.monotonic() + self.hold_timeout
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        raise HopUnreachable("the tunnel is closed")
                    chain = self.chain
                    if chain is not None and chain.alive():
                        transport = chain.transports[-1]
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise HopUnreachable(f"the SSH connection did not come back within "
                                             f"{self.hold_timeout:g} s")
                    self._cond.wait(min(remaining, 0.5))  # also re-checks a chain that died
            try:
                timeout = max(1.0, min(10.0, deadline - time.monotonic()))
                return transport.open_channel("direct-tcpip", address, origin, timeout=timeout)
            except (paramiko.SSHException, EOFError, OSError):
                tuning.forget_old_channels(transport)  # a refused open leaves its id behind
                # refused by the server: give up; the connection lost meanwhile: hold on
                if (self.chain is chain and chain.alive()) or time.monotonic() >= deadline:
                    raise

    # forwards -----------------------------------------------------------------
    def forward_local(self, local_port: int, remote_host: str, remote_port: int) -> int:
        """Forward 127.0.0.1:local_port to remote_host:remote_port as the last hop sees it."""
        chain = self._live_chain()
        hop = chain.hops[-1]
        fwd = Forwarder(
            (hop.hostname, hop.port),
            ssh_config_file=None,
            ssh_username=hop.user,
            ssh_pkey=PlaceholderKey(),
            allow_agent=False,
            host_pkey_directories=[],
            local_bind_address=("127.0.0.1", local_port),
            remote_bind_address=(remote_host, remote_port),
            mute_exceptions=False,
            logger=_sshtunnel_log,
            set_keepalive=0,
        )
        fwd.backend = self
        fwd.target = target = Target(Route(remote_host, remote_port))
        fwd._transport = chain.transports[-1]  # connected already: sshtunnel skips its login
        try:
            fwd.start()
        except TunnelError:
            detach(fwd)
            raise
        except sshtunnel.BaseSSHTunnelForwarderError as exc:
            detach(fwd)
            raise TunnelError(f"cannot start the forward to {remote_host}:{remote_port} on "
                              f"{hop.label}: {exc}", hop=hop.alias) from None
        port: int = fwd.local_bind_port
        fwd.__dict__.pop("_transport", None)  # the handlers ask open_channel() instead
        with self._cond:
            closed = self._closed
            if not closed:
                self._forwarders.append(fwd)
                self._targets[port] = target
        if closed:  # close() ran meanwhile: it did not see this listener
            for srv in fwd._server_list:
                with contextlib.suppress(Exception):
                    srv.shutdown()
            detach(fwd)
            raise HopUnreachable("the tunnel was closed while the forward was being set up")
        return port

    def retarget(self, local_port: int, remote_host: str, remote_port: int) -> None:
        """Send new connections of the listener on ``local_port`` to another address."""
        self._targets[local_port].route = Route(remote_host, remote_port)

    def forward_remote(self, remote_port: int, local_host: str, local_port: int,
                       bind: str = "127.0.0.1") -> int:
        """Have the last hop listen on ``bind:remote_port`` and send its connections to
        ``local_host:local_port`` as this machine sees it; return the port it bound."""
        reverse = _Reverse(bind, remote_port, local_host, local_port)
        chain = self._live_chain()
        reverse.port = self._request_remote(chain, reverse)
        with self._cond:
            self._reverse[reverse.port] = reverse
            self._granted[reverse.port] = chain
        return reverse.port

    def restore_remote(self) -> None:
        """Ask the current last hop again for every remote forward it does not hold yet, on
        the same ports; raise for the first it still refuses (after trying them all)."""
        chain = self._live_chain()
        with self._cond:
            wanted = [r for r in self._reverse.values() if self._granted.get(r.port) is not chain]
        refused: TunnelError | None = None
        for reverse in wanted:
            try:
                self._request_remote(chain, reverse)
            except RemotePortRefused as exc:
                refused = refused or exc
                continue
            with self._cond:
                self._granted[reverse.port] = chain
        if refused is not None:
            raise refused

    def _request_remote(self, chain: HopChain, reverse: _Reverse) -> int:
        hop = chain.hops[-1]
        try:
            port: int = chain.transports[-1].request_port_forward(
                reverse.bind, reverse.port, handler=self._accept_remote)
        except paramiko.SSHException as exc:
            if not chain.alive():
                raise HopUnreachable(f"lost {hop.label} while asking it to listen on port "
                                     f"{reverse.port}: {exc}", hop=hop.alias) from None
            where = f"{reverse.bind}:{reverse.port}" if reverse.port else reverse.bind
            raise RemotePortRefused(
                f"{hop.label} refused to listen on {where} for --reverse: the port is taken "
                f"there, or its sshd does not allow remote forwarding (AllowTcpForwarding, "
                f"PermitListen). Choose another remote port, or free this one on {hop.alias}",
                hop=hop.alias) from None
        return port

    def _accept_remote(self, chan: Any, origin: tuple[str, int],
                       server: tuple[str, int]) -> None:
        reverse = self._reverse.get(server[1])
        if reverse is None:
            chan.close()
            return
        threading.Thread(target=self._serve_remote, args=(chan, reverse), daemon=True,
                         name="jupyter_tunnel-reverse").start()

    def _serve_remote(self, chan: Any, reverse: _Reverse) -> None:
        try:
            sock = socket.create_connection((reverse.host, reverse.to_port), timeout=10)
        except OSError as exc:
            log.debug("reverse forward to %s:%s failed: %s", reverse.host, reverse.to_port, exc)
            chan.close()
            return
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.relay_connection(sock, chan, False,
                              f"reverse connection to {reverse.host}:{reverse.to_port}")

    # relaying -----------------------------------------------------------------
    def relay_connection(self, sock: socket.socket, chan: Any, inbound: bool, what: str,
                         counted: bool = True) -> None:
        """Relay one connection (:func:`relay`), tracked and (``counted``) counted; close
        both ends."""
        key = id(sock)
        with self._relays_cond:
            self._relays[key] = (sock, chan)
        counters = self.counters if counted else Counters()
        counters.opened()
        try:
            relay(sock, chan, counters, inbound=inbound)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            log.debug("%s ended: %s", what, exc)
        finally:
            counters.ended()
            with contextlib.suppress(Exception):  # sending CLOSE on a dying connection
                chan.close()
            with self._relays_cond:  # not while _end_relays shuts it down
                sock.close()
                del self._relays[key]
                idle = not self._relays
                self._relays_cond.notify_all()
            memory.releaser.connection_ended(idle)  # what the connection's thread freed

    def relaying(self) -> int:
        """How many connections are being relayed now."""
        with self._relays_cond:
            return len(self._relays)

    def _end_relays(self, transports: Iterable[Any] | None,
                    grace: float = RELAY_GRACE) -> None:
        """End the relays whose channels ride ``transports`` (None: all), once those are
        closed.  A relay notices its channel closing and resets its local end by itself;
        one still there after ``grace`` seconds is stuck writing to a local client that
        does not read: its connection is aborted (:func:`relay.abort`: a reset, never a
        FIN the client could take for a complete answer), which fails that write."""
        riding = None if transports is None else set(transports)
        deadline = time.monotonic() + grace
        with self._relays_cond:
            while True:
                stuck = [sock for sock, chan in self._relays.values()
                         if riding is None or chan.get_transport() in riding]
                remaining = deadline - time.monotonic()
                if not stuck or remaining <= 0:
                    break
                self._relays_cond.wait(remaining)
            for sock in stuck:
                abort(sock)

    # state --------------------------------------------------------------------
    def alive(self) -> bool:
        """Whether every hop is connected."""
        chain = self.chain
        return chain is not None and chain.alive()

    def dead_hop(self) -> ResolvedHop | None:
        """The first hop whose connection is down."""
        chain = self.chain
        return chain.dead_hop() if chain is not None else None

    def stats(self) -> dict[str, int]:
        """Traffic counters."""
        return self.counters.snapshot()

    def children(self) -> list[dict[str, Any]]:
        """Processes this backend started (none: everything runs in this process)."""
        return []

    def close(self) -> None:
        """Stop the listeners, close the hops last first, end the relays; idempotent."""
        with self._cond:
            self._closed = True
            forwarders, self._forwarders = self._forwarders, []
            chains = [self.chain, self._connecting]
            self.chain = None
            self._cond.notify_all()
        for fwd in forwarders:
            for srv in fwd._server_list:
                with contextlib.suppress(Exception):
                    srv.shutdown()
            detach(fwd)
        for chain in chains:
            if chain is not None:
                chain.close()
        self._end_relays(None)
