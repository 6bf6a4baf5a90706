"""A chain of paramiko SSH transports, each next hop riding a channel of the previous.

Host keys are checked on every hop (``hostkeys.verify``) before any
authentication is attempted; failures become typed errors naming the hop.  Every
transport, the first hop's and those riding channels, is made by
:func:`tuning.new_transport`: our channel buffers, event pipes and log channel apply to
them only, never to other paramiko users of the process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from typing import Any

import paramiko

from .. import hostkeys
from ..errors import ForwardingRefused, HopTimeout, HopUnreachable
from ..login.questions import Ask
from ..sshconfig import ResolvedHop
from . import tuning
from .base import DeadCallback, NoticeCallback, ProgressCallback
from .paramiko_login import Login

log = logging.getLogger("jupyter_tunnel")


class HopChain:
    """Connected transports, first hop first."""

    def __init__(self) -> None:
        self.transports: list[paramiko.Transport] = []
        self.hops: list[ResolvedHop] = []
        self._closed = False
        #: the socket or channel of a handshake under way (close() cuts it)
        self._pending: Any = None
        self._agent: Any = None
        self._notice: NoticeCallback | None = None
        self._ask: Ask | None = None
        #: per transport: when a packet last arrived from the server
        self.last_read: list[float] = []
        self._stop = threading.Event()

    def connect(self, chain: list[ResolvedHop], progress: ProgressCallback | None,
                timeout: float, notice: NoticeCallback | None = None,
                ask: Ask | None = None) -> None:
        """Connect all hops in order; on failure close what was opened and raise.  A hop's
        questions (a one-time code, a password, a key's passphrase) go to ``ask``."""
        self._notice = notice
        self._ask = ask
        try:
            for index, hop in enumerate(chain):
                if self._closed:
                    raise HopUnreachable("the tunnel was closed while connecting")
                if progress:
                    progress(index, hop)
                sock = self._open_socket(hop, timeout)
                self._pending = sock
                if self._closed:
                    raise HopUnreachable("the tunnel was closed while connecting")
                transport = self._handshake(hop, sock, timeout)
                self._pending = None
                self.last_read.append(time.monotonic())
                self._watch_reads(transport, len(self.last_read) - 1)
                self.transports.append(transport)
                self.hops.append(hop)
        except BaseException:
            self.close()
            raise
        finally:
            if self._agent is not None:  # agent keys sign through it: close it only now
                self._agent.close()
                self._agent = None

    def _open_socket(self, hop: ResolvedHop, timeout: float) -> Any:
        t = hop.connect_timeout or timeout
        if not self.transports:
            try:
                sock = socket.create_connection((hop.hostname, hop.port), timeout=t)
            except socket.gaierror:
                raise HopUnreachable(
                    f"cannot resolve {hop.label}: no such host name. Check the name or the "
                    "HostName in your ssh config", hop=hop.alias) from None
            except TimeoutError:
                raise HopTimeout(
                    f"{hop.label} did not answer within {t:g} s: is it up and reachable from "
                    "here? (ConnectTimeout sets the limit)", hop=hop.alias) from None
            except ConnectionRefusedError:
                raise HopUnreachable(
                    f"{hop.label} refused the connection: no SSH server listens on port "
                    f"{hop.port}", hop=hop.alias) from None
            except OSError as exc:
                raise HopUnreachable(
                    f"cannot reach {hop.label}: {exc.strerror or exc}", hop=hop.alias) from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        prev, prev_hop = self.transports[-1], self.hops[-1]
        try:
            return prev.open_channel(
                "direct-tcpip", (hop.hostname, hop.port), ("127.0.0.1", 0), timeout=t)
        except paramiko.ChannelException as exc:
            if exc.code == 1:  # administratively prohibited
                raise ForwardingRefused(
                    f"{prev_hop.label} does not allow TCP forwarding, so it cannot be a jump "
                    f"host for {hop.alias} (AllowTcpForwarding in its sshd_config)",
                    hop=prev_hop.alias) from None
            raise HopUnreachable(
                f"{prev_hop.alias} could not connect to {hop.label}: {exc.text or 'refused'}. "
                f"Is {hop.alias} up, and is its name right as {prev_hop.alias} sees it?",
                hop=hop.alias) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise HopUnreachable(
                f"connection to {prev_hop.label} was lost while reaching {hop.alias}: {exc}",
                hop=prev_hop.alias) from None

    def _watch_reads(self, transport: paramiko.Transport, index: int) -> None:
        """Note the time of every packet read: a keepalive answered is a hop alive."""
        packetizer = transport.packetizer
        read = packetizer.read_message

        def read_message() -> Any:
            message = read()
            self.last_read[index] = time.monotonic()
            return message

        packetizer.read_message = read_message

    def start_keepalive(self, interval: int, count_max: int,
                        on_dead: DeadCallback) -> None:
        """Send keepalives that want a reply on every hop (ServerAliveInterval, or ``interval``)
        and call ``on_dead`` once a hop has left ``count_max`` of them unanswered.

        Sending and watching are separate threads: a send can block for as long as a relay
        thread holds the transport's write lock on a dead link (an upload in flight), and
        the watchdog must still see the silence.
        """
        settings = []
        for hop in self.hops:
            every = hop.server_alive_interval if hop.server_alive_interval is not None \
                else interval
            count = hop.server_alive_count_max if hop.server_alive_count_max is not None \
                else count_max
            settings.append((max(every, 0), max(count, 1)))
        step = min([every / 4 for every, _ in settings if every] + [1.0])
        threading.Thread(target=self._watchdog, args=(settings, step, on_dead),
                         name="jupyter_tunnel-watchdog", daemon=True).start()
        for i, (every, _) in enumerate(settings):
            if every:
                threading.Thread(target=self._send_keepalives, args=(i, every),
                                 name=f"jupyter_tunnel-keepalive-{i}", daemon=True).start()

    def _send_keepalives(self, index: int, every: int) -> None:
        transports = self.transports  # close() swaps in an empty list
        while not self._stop.wait(every):
            try:
                message = paramiko.Message()
                message.add_byte(paramiko.common.cMSG_GLOBAL_REQUEST)
                message.add_string("keepalive@openssh.com")
                message.add_boolean(True)  # want a reply: that is the point
                transports[index]._send_user_message(message)
            except (paramiko.SSHException, EOFError, OSError):
                return  # a dead transport is noticed by the watchdog

    def _watchdog(self, settings: list[tuple[int, int]], step: float,
                  on_dead: DeadCallback) -> None:
        """Never touches a transport's locks: only the clock and ``is_active``."""
        transports, hops = self.transports, self.hops
        while not self._stop.wait(step):
            now = time.monotonic()
            for i, (every, count) in enumerate(settings[:len(transports)]):
                hop = hops[i]
                if not transports[i].is_active():
                    on_dead(hop, f"the connection to {hop.label} was closed", False)
                    return
                if every and now - self.last_read[i] > every * count + step:
                    on_dead(hop, f"{hop.label} stopped answering: {count} keepalive(s) sent "
                                 f"{every} s apart got no reply", True)
                    return

    def _handshake(self, hop: ResolvedHop, sock: Any, timeout: float) -> paramiko.Transport:
        t = hop.connect_timeout or timeout
        transport = tuning.new_transport(sock)
        transport.banner_timeout = t
        transport.handshake_timeout = t
        known = hostkeys.preferred_types(hop)
        if "ssh-rsa" in known:  # an RSA host key is negotiated as rsa-sha2-*, as OpenSSH does
            i = known.index("ssh-rsa")
            known[i:i + 1] = ["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
        if known:
            opts = transport.get_security_options()
            supported = list(opts.key_types)
            opts.key_types = [k for k in known if k in supported] + [
                k for k in supported if k not in known]
        started = time.monotonic()
        try:
            transport.start_client(timeout=t)
            if not transport.is_active() or transport.host_key is None:
                # start_client returns quietly when the time is up
                raise TimeoutError
        except (paramiko.SSHException, EOFError, OSError) as exc:
            transport.close()
            text = str(exc) or type(exc).__name__
            # paramiko reports a banner that never came either way: by returning quietly or
            # as "Error reading SSH protocol banner"; the clock tells a timeout from an EOF
            if isinstance(exc, TimeoutError) or time.monotonic() - started >= t * 0.9:
                raise HopTimeout(f"{hop.label} did not complete the SSH handshake within "
                                 f"{t:g} s", hop=hop.alias) from None
            raise HopUnreachable(f"SSH handshake with {hop.label} failed: {text}. Is an SSH "
                                 f"server listening on port {hop.port}?", hop=hop.alias) from None
        try:
            key = transport.get_remote_server_key()
            if hostkeys.verify(hop, key.get_name(), key.asbytes()) and self._notice:
                self._notice(f"Permanently added the {key.get_name()} host key of {hop.label} "
                             f"({hostkeys.fingerprint(key.asbytes())}) to "
                             f"{hop.known_hosts_files[0]}")
            self._authenticate(hop, transport, t)
        except BaseException:
            transport.close()
            raise
        return transport

    def _authenticate(self, hop: ResolvedHop, transport: paramiko.Transport, t: float) -> None:
        """Keys first, then what the hop still asks (see :mod:`.paramiko_login`)."""
        login = Login(hop, transport, self._ask)
        if self._agent is None and os.environ.get("SSH_AUTH_SOCK"):
            try:
                self._agent = paramiko.Agent()
            except (paramiko.SSHException, OSError) as exc:
                login.notes.append(f"ssh-agent could not be used: {exc}")
        login.run(self._agent)

    def exec(self, command: str, timeout: float, stdin: str | None = None
             ) -> tuple[int, str, str]:
        """Run ``command`` on the last hop, feeding it ``stdin``."""
        transport, hop = self.transports[-1], self.hops[-1]
        try:
            chan = transport.open_session(timeout=timeout)
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise HopUnreachable(f"cannot open a session on {hop.label}: {exc}",
                                 hop=hop.alias) from None
        try:
            chan.settimeout(timeout)
            chan.exec_command(command)
            try:
                if stdin is not None:
                    chan.sendall(stdin.encode())
                chan.shutdown_write()
            except OSError:
                # the command ended before reading all its input (a program not found):
                # its exit status and stderr say why, the connection is fine
                if not transport.is_active() or not (chan.closed or chan.eof_received):
                    raise
            out, err = bytearray(), bytearray()
            stderr_thread = threading.Thread(
                target=lambda: err.extend(chan.makefile_stderr("rb").read()), daemon=True)
            stderr_thread.start()
            out.extend(chan.makefile("rb").read())
            stderr_thread.join(timeout)
            status = chan.recv_exit_status()
        except TimeoutError:
            raise HopTimeout(f"a command on {hop.label} did not finish within {timeout:g} s",
                             hop=hop.alias) from None
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise HopUnreachable(f"lost {hop.label} while running a command: {exc}",
                                 hop=hop.alias) from None
        finally:
            chan.close()
        return status, out.decode(errors="replace"), err.decode(errors="replace")

    def dead_hop(self) -> ResolvedHop | None:
        """The first hop whose connection is down (the ones after it went down with it)."""
        for hop, transport in zip(self.hops, self.transports, strict=False):
            if not transport.is_active():
                return hop
        return None

    def alive(self) -> bool:
        """True while every transport is active."""
        return bool(self.transports) and all(t.is_active() for t in self.transports)

    def close(self) -> None:
        """Close transports, first hop first; a connect under way stops at the next hop.

        First hop first, never last: on a dead link a thread writing an upload blocks in
        the first hop's socket holding that transport's write lock, and closing a later
        hop sends its channel's CLOSE through that same transport, so it would wait for
        the network to come back.  Closed first, the first hop fails that write at once
        and the later hops' channels are already gone (nothing left to send)."""
        self._closed = True
        self._stop.set()
        pending, self._pending = self._pending, None
        if pending is not None:
            with contextlib.suppress(Exception):
                pending.close()
        transports, self.transports, self.hops = self.transports, [], []
        for transport in transports:
            with contextlib.suppress(Exception):
                transport.close()

