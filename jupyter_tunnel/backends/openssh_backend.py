"""The OpenSSH backend: the system ``ssh`` carries the tunnel.

One ssh ControlMaster per chain of hops (``ssh -M -N -J …``, see :mod:`.openssh_master`)
holds the SSH connections; the bytes of every forwarded connection move inside it, in C,
along the same path as with ``ssh -J … -L``.  A second tunnel to the same hosts, from any
process of the user, finds the master through its control socket and uses it: no new
login.  The local listeners are this process's own (:mod:`.openssh_forward`): they stay
bound while ssh reconnects, hold new connections meanwhile, and hand each connection to
the master (``MUX_C_NEW_STDIO_FWD``).  Remote forwards, commands on the target, ``check``
and ``exit`` go through the master with ``ssh -S SOCKET -O …``.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any

from .. import procinfo
from ..errors import ConfigError, HopTimeout, HopUnreachable, RemotePortRefused, TunnelError
from ..login.questions import Ask
from ..sshconfig import ResolvedHop
from . import openssh_master as om
from . import openssh_mux as mux
from .base import Acceptor, DeadCallback, NoticeCallback, ProgressCallback
from .counters import Counters
from .openssh_errors import loss
from .openssh_files import MasterFiles, chain_key, control_dir, live_users
from .openssh_forward import Forwarder, Route
from .openssh_links import MasterLinks


@dataclass(eq=False)
class _Master:
    """This backend's use of one master."""

    files: MasterFiles
    chain: list[ResolvedHop]
    pid: int
    launch: om.Launch | None  # set when this backend started it
    keepalive: dict[str, tuple[int, int]]
    children: list[dict[str, Any]] = field(default_factory=list)
    remote_specs: list[str] = field(default_factory=list)  # -R asked of this master
    gone: bool = False
    lost: tuple[ResolvedHop, str, bool] | None = None
    links: MasterLinks | None = None  # streamlocal forwards asked of this master


@dataclass
class _Reverse:
    bind: str
    port: int  # as bound
    host: str
    to_port: int


def _accepts(hop: ResolvedHop, timeout: float) -> bool:
    """Whether ``hop``'s SSH port accepts a TCP connection now."""
    try:
        with socket.create_connection((hop.hostname, hop.port), timeout=timeout):
            return True
    except OSError:
        return False


class OpenSSHBackend:
    """Tunnels carried by a shared ssh ControlMaster (see the module doc)."""

    def __init__(self, hold_timeout: float = 20.0, keepalive_interval: int = 15,
                 keepalive_count_max: int = 3) -> None:
        self.hold_timeout = hold_timeout
        self.keepalive_interval = keepalive_interval
        self.keepalive_count_max = keepalive_count_max
        self.counters = Counters()
        self._forwarder = Forwarder(self.counters, hold_timeout)
        self._lock = threading.RLock()
        self._master: _Master | None = None
        self._launch: om.Launch | None = None
        self._on_dead: DeadCallback | None = None
        self._reverse: list[_Reverse] = []
        self._closed = False
        pid, started = procinfo.self_identity()
        self._user = f"{pid}-{started}-{os.urandom(6).hex()}"

    # the SSH connection -------------------------------------------------------
    def connect(self, chain: list[ResolvedHop], progress: ProgressCallback | None = None,
                timeout: float = 10.0, notice: NoticeCallback | None = None,
                ask: Ask | None = None) -> None:
        """Use the live master of this chain (no new login: nothing is asked), or log in
        and start one.  A hop's questions (a one-time code, a password, a key's
        passphrase) go to ``ask`` (see :mod:`.openssh_ask`); without it, ssh asks nothing
        and such a login fails with :class:`AnswerNeeded` naming the hop."""
        self.disconnect()
        try:
            files = MasterFiles(control_dir(), chain_key(chain))
        except OSError as exc:
            raise ConfigError(f"the OpenSSH backend cannot use its control folder: {exc}"
                              ) from None
        try:
            self._connect(files, chain, progress, timeout, notice, ask)
        except FileNotFoundError as exc:
            if exc.filename == om.SSH:
                raise ConfigError(f"the OpenSSH backend cannot start ssh: {exc}") from None
            raise om.unreachable(chain[-1], str(exc)) from None
        except OSError as exc:  # out of processes or descriptors for now: a retry may do
            raise om.unreachable(chain[-1], f"cannot start ssh: {exc}") from None

    def _connect(self, files: MasterFiles, chain: list[ResolvedHop],
                 progress: ProgressCallback | None, timeout: float,
                 notice: NoticeCallback | None, ask: Ask | None) -> None:
        keepalive = {h.alias: (
            self.keepalive_interval if h.server_alive_interval is None
            else h.server_alive_interval,
            self.keepalive_count_max if h.server_alive_count_max is None
            else h.server_alive_count_max) for h in chain}
        with files.locked(cancelled=lambda: self._closed):
            try:
                master, anchor = self._attach(files, chain, keepalive, progress, timeout,
                                              notice, ask)
            except BaseException:
                # nothing of a master that did not come up stays (others' never go)
                if not live_users(files.users) and not files.socket_alive():
                    files.forget()
                raise
        with self._lock:
            closed = self._closed
            if not closed:
                self._master = master
        if closed:
            mux.close_quietly(anchor)
            self._release(master)
            raise HopUnreachable("the tunnel was closed while connecting")
        self._forwarder.attach(str(files.socket), anchor, lambda: self._gone(master),
                               files.trim_log)

    def _attach(self, files: MasterFiles, chain: list[ResolvedHop],
                keepalive: dict[str, tuple[int, int]], progress: ProgressCallback | None,
                timeout: float, notice: NoticeCallback | None, ask: Ask | None = None
                ) -> tuple[_Master, socket.socket]:
        """Holding the master's lock: use its live master, or log in and start one; take
        an anchor on it and register as its user."""
        target = chain[-1]
        pid = om.check(files, target.alias)
        launch = None
        if pid is None:
            files.socket_alive()  # removes a socket no master listens on
            files.write_config(chain, self.keepalive_interval, self.keepalive_count_max,
                               timeout, asking=ask is not None)
            launch = om.Launch(files, chain, ask)
            with self._lock:
                if self._closed:
                    raise HopUnreachable("the tunnel was closed")
                self._launch = launch
            try:
                launch.run(progress, timeout, notice)
            finally:
                with self._lock:
                    self._launch = None
            pid = om.check(files, target.alias)
            if pid is None:
                launch.kill()
                raise om.unreachable(target, "ssh logged in but its master does not answer")
        elif notice:
            notice(f"using the SSH connection already open to {target.label} (ssh pid "
                   f"{pid}): no new login")
        master = _Master(files, chain, pid, launch, keepalive,
                         links=MasterLinks(files, target.alias, target.label))
        if launch is not None:
            # "shared": cleanup must not end them while another tunnel uses the master
            master.children = [{**child, "shared": str(files.users)}
                               for child in launch.processes(pid)]
        try:
            anchor = mux.anchor(str(files.socket))
        except (OSError, mux.MuxError) as exc:
            if launch is not None:
                launch.kill()
            raise om.unreachable(target, f"its control socket: {exc}") from None
        files.register(self._user, master.remote_specs)
        return master, anchor

    def _gone(self, master: _Master) -> None:
        """The master ended (our control connection to it did): find out why, report it."""
        said = om.last_words(master.files, master.children or [{"pid": master.pid}])
        master.lost = loss(said, master.chain, master.keepalive)
        target = master.chain[-1]
        first = master.chain[0]
        named_target = master.lost is not None and master.lost[0] is target and \
            not master.lost[2]  # a keepalive timeout names its hop itself
        if first is not target and (master.lost is None or named_target) and \
                not _accepts(first, 1.0):
            # ssh's words are ambiguous here: a jump helper that loses its connection while
            # sending may say only "Broken pipe", and the master then says its target
            # closed (its "connection" is the helper's pipe); a first hop that refuses TCP
            # now is the one lost
            master.lost = (first, f"the connection to {first.label} was closed", False)
        if master.lost is None:
            what = "was closed" if master.launch is not None else \
                "(shared with another tunnel) was closed"
            master.lost = (target, f"the connection to {target.label} {what}", False)
        with self._lock:
            master.gone = True
            callback = self._on_dead if self._master is master else None
        if master.links is not None:
            master.links.forget()
        if callback is not None:
            callback(*master.lost)

    def disconnect(self) -> None:
        """Stop using the master (ending it if no other tunnel uses it); listeners stay."""
        with self._lock:
            master, self._master = self._master, None
            self._on_dead = None
        if master is not None:
            self._forwarder.detach()
            self._release(master)

    def _release(self, master: _Master) -> None:
        files, alias = master.files, master.chain[-1].alias
        with contextlib.ExitStack() as stack:
            try:
                stack.enter_context(files.locked(timeout=10.0))
            except TunnelError:  # held too long elsewhere: just leave (our control
                files.drop(self._user)  # connections closed, ControlPersist ends it)
                return
            others = files.unregister(self._user)
            if master.links is not None:
                if others and not master.gone:
                    master.links.cancel()
                else:
                    master.links.forget()
            if master.gone:
                if not others:
                    files.forget()
                return
            if others:
                for spec in master.remote_specs:  # free our remote ports for the others
                    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                        om.control(files, alias, "-O", "cancel", "-R", spec)
                return
            children = master.children or [c for c in [procinfo.identity(master.pid)] if c]
            om.end(files, alias, children)
            files.forget()

    def _live(self) -> _Master:
        master = self._master
        if master is None or master.gone:
            raise HopUnreachable("the SSH connection is down")
        return master

    def keepalive(self, interval: int, count_max: int, on_dead: DeadCallback) -> None:
        """Report the master's end (its keepalives use ServerAlive* of the config, else the
        values this backend was made with); raise :class:`HopUnreachable` if it is gone."""
        with self._lock:
            self._live()
            self._on_dead = on_dead

    def run(self, command: str, timeout: float = 30.0, stdin: str | None = None
            ) -> tuple[int, str, str]:
        """Run ``command`` on the target through the master (``ssh -S SOCKET target``)."""
        master = self._live()
        hop = master.chain[-1]
        # ProxyCommand=false: should the master be gone, ssh must fail, not connect anew
        # directly (without the jump hosts, the user's config, or its host key settings)
        argv = [om.SSH, "-F", os.devnull, "-S", str(master.files.socket), "-o",
                "ControlMaster=no", "-o", "ProxyCommand=false", "-o", "BatchMode=yes", "-T",
                "-l", hop.user, "-p", str(hop.port), "--", hop.alias, command]
        try:
            result = subprocess.run(argv, input=(stdin or "").encode(), capture_output=True,
                                    timeout=timeout, env=om.ssh_env(), start_new_session=True,
                                    check=False)
        except subprocess.TimeoutExpired:
            raise HopTimeout(f"a command on {hop.label} did not finish within {timeout:g} s",
                             hop=hop.alias) from None
        except OSError as exc:
            raise om.unreachable(hop, f"cannot run ssh: {exc}") from None
        out, err = result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
        if result.returncode == 255 and ("Control socket" in err or master.gone or
                                         not master.files.socket.exists() or
                                         "kex_exchange_identification" in err):
            raise HopUnreachable(f"lost {hop.label} while running a command: "
                                 f"{err.strip() or 'ssh exited'}", hop=hop.alias)
        return result.returncode, out, err

    # forwards -----------------------------------------------------------------
    def set_acceptor(self, acceptor: Acceptor | None) -> None:
        """Hand accepted local connections to ``acceptor`` instead of the master."""
        self._forwarder.acceptor = acceptor

    def unix_link(self, path: str, timeout: float = 10.0) -> socket.socket:
        """A connected socket carried to the Unix socket ``path`` on the target (see
        :mod:`.openssh_links`); :class:`HopUnreachable` while the master is down."""
        master = self._live()
        assert master.links is not None
        return master.links.connect(path, timeout)

    def forward_local(self, local_port: int, remote_host: str, remote_port: int) -> int:
        """Listen on 127.0.0.1:local_port; the master carries each connection to
        remote_host:remote_port as the target sees it."""
        self._live()
        return self._forwarder.listen(local_port, Route(remote_host, remote_port))

    def retarget(self, local_port: int, remote_host: str, remote_port: int) -> None:
        """Send new connections of the listener on ``local_port`` to another address."""
        route = self._forwarder.route(local_port)
        route.host, route.port = remote_host, remote_port

    def forward_remote(self, remote_port: int, local_host: str, local_port: int,
                       bind: str = "127.0.0.1") -> int:
        """``-O forward -R``: the target listens on bind:remote_port, the master connects
        to local_host:local_port here; return the remote port bound."""
        reverse = _Reverse(bind, remote_port, local_host, local_port)
        reverse.port = self._request_remote(self._live(), reverse)
        with self._lock:
            self._reverse.append(reverse)
        return reverse.port

    def restore_remote(self) -> None:
        """Ask the (new) master for every remote forward again, on the same ports."""
        master = self._live()
        with self._lock:
            wanted = list(self._reverse)
        first: TunnelError | None = None
        for reverse in wanted:  # every one that can be had, then say what could not
            try:
                self._request_remote(master, reverse)
            except TunnelError as exc:
                if not isinstance(exc, RemotePortRefused):
                    raise
                first = first or exc
        if first is not None:
            raise first

    def _request_remote(self, master: _Master, reverse: _Reverse) -> int:
        with master.files.locked(timeout=10.0):
            return self._request_remote_locked(master, reverse)

    def _request_remote_locked(self, master: _Master, reverse: _Reverse) -> int:
        hop = master.chain[-1]
        where = f"{om._bracket(reverse.bind)}:{reverse.port}"
        spec = f"{where}:{om._bracket(reverse.host)}:{reverse.to_port}"
        if reverse.port or spec in master.files.remote_of_others(self._user):
            # the master would grant a port it already forwards for another tunnel (and
            # cancel it for both when that one leaves); sshd refuses it to a second login
            holder = next((pid for held, pid in master.files.remote_of_others(self._user).items()
                           if held.startswith(f"{where}:") if reverse.port or held == spec),
                          None)
            if holder is not None:
                raise RemotePortRefused(
                    f"{hop.label} already listens on {where} for another tunnel (process "
                    f"{holder}): choose another remote port for --reverse, or close that "
                    "tunnel", hop=hop.alias)
        try:
            result = om.control(master.files, hop.alias, "-O", "forward", "-R", spec)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise om.unreachable(hop, str(exc)) from None
        if result.returncode != 0:
            if master.gone or "Control socket" in result.stderr or \
                    not master.files.socket.exists() or om.check(master.files, hop.alias) is None:
                raise HopUnreachable(f"lost {hop.label} while asking it to listen on port "
                                     f"{reverse.port}", hop=hop.alias)
            where = f"{reverse.bind}:{reverse.port}" if reverse.port else reverse.bind
            raise RemotePortRefused(
                f"{hop.label} refused to listen on {where} for --reverse: the port is taken "
                f"there, or its sshd does not allow remote forwarding (AllowTcpForwarding, "
                f"PermitListen). Choose another remote port, or free this one on {hop.alias}",
                hop=hop.alias)
        if spec not in master.remote_specs:
            master.remote_specs.append(spec)
            master.files.register(self._user, master.remote_specs)
        match = re.search(r"^(\d+)\s*$", result.stdout, re.MULTILINE)
        return int(match.group(1)) if match and not reverse.port else reverse.port

    # state --------------------------------------------------------------------
    def alive(self) -> bool:
        """Whether the master is up."""
        master = self._master
        return master is not None and not master.gone

    def dead_hop(self) -> ResolvedHop | None:
        """The hop the master lost (the target when ssh did not say)."""
        master = self._master
        if master is None or not master.gone:
            return None
        return master.lost[0] if master.lost else master.chain[-1]

    def stats(self) -> dict[str, int]:
        """Connections and bytes of the local forwards (the kernel's counts of each local
        socket); remote forwards are carried by ssh alone and not counted."""
        return self._forwarder.stats()

    def children(self) -> list[dict[str, Any]]:
        """The ssh processes of the master this backend started ({pid, started, cmdline})."""
        master = self._master
        return list(master.children) if master is not None and not master.gone else []

    def close(self) -> None:
        """Close the listeners, leave the master (ending it if no other tunnel uses it);
        stop a login under way.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            launch = self._launch
        if launch is not None:
            launch.kill()
        self._forwarder.close()
        with contextlib.suppress(OSError, TunnelError):
            self.disconnect()
