"""A throwaway SSH network on this machine: the laptop, jump host "unicorn" and "beast".

As root with network namespaces, unicorn and beast each get a namespace; beast is reachable
only through unicorn's sshd. Otherwise both sshd listen on 127.0.0.1 (beast not isolated).
Used by ``jupyter tunnel demo``, the integration tests and the benchmarks.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .sandbox_login import (
    AHEAD,
    STEP,
    Made,
    check_totp_tools,
    new_secret,
    password_sshd_lines,
    totp_sshd_lines,
)
from .sandbox_login import totp_code as _totp_code
from .sandbox_procs import (
    _FREE_PORT,
    _WAIT_JUPYTER,
    SandboxError,
    _kill_pids,
    _netns_usable,
    _out,
    _pids_with_env,
    _run,
    _tail,
    _terminate,
)

SSHD = "/usr/sbin/sshd"
NET_RANGE = "10.213.0.0/16"
ROUTE_PROTO = "213"  # marks the unreachable route as made by a sandbox
SESSION_PATH = "/usr/local/bin:/usr/bin:/bin"
DAEMON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MARKER = "JT_SANDBOX"  # in the env of all sessions and servers: stop() ends those left
HOSTS = ("unicorn", "beast")

@dataclass
class SandboxHost:
    """One sshd of the sandbox."""

    name: str
    address: str
    port: int
    netns: str | None
    host_key: Path
    sshd_config: Path
    #: the program started: sshd, or a link to it whose name picks its PAM service
    program: str = SSHD
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)


@dataclass
class SandboxJupyter:
    """The Jupyter server running on beast."""

    port: int
    token: str
    pid: int
    base_url: str
    root_dir: Path
    runtime_dir: Path


class Sandbox:
    """Build and remove the SSH network; see the module docstring."""

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        netns: bool | None = None,
        prefix: str | None = None,
        jupyter: bool = True,
        log: Callable[[str], None] | None = None,
        totp: bool = False,
        password: bool = False,
        key_passphrase: str | None = None,
    ) -> None:
        """``totp``: unicorn wants the key AND a TOTP code (PAM, pam_oath; root only; codes
        from :meth:`next_code`).  ``password``: a user :attr:`password_user` logs in to
        unicorn with :attr:`password` only (ssh config alias ``unicorn-pw``; root only).
        ``key_passphrase``: the sandbox key also as :attr:`locked_key`, encrypted with it
        (alias ``unicorn-locked``)."""
        self.prefix = prefix or "jt" + secrets.token_hex(2)
        if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", self.prefix):
            raise SandboxError(f"prefix {self.prefix!r}: use 1-12 lowercase letters/digits")
        self.netns = _netns_usable() if netns is None else netns
        self._base_dir = base_dir
        self._want_jupyter = jupyter
        self._log = log or (lambda _msg: None)
        self.dir = Path(base_dir) if base_dir else Path()
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.hosts: dict[str, SandboxHost] = {}
        self.jupyter: SandboxJupyter | None = None
        self._jupyter_proc: subprocess.Popen[bytes] | None = None
        self._made_dir = False
        self._namespaces: list[str] = []
        self._root_link: str | None = None
        self.route_added = False  # this sandbox added the unreachable route
        self._started = False
        self._owner = os.getpid()  # atexit in a forked child must not tear the sandbox down
        self.subnet_a = self.subnet_b = ""  # netns mode: root<->unicorn, unicorn<->beast
        if totp and password:
            raise SandboxError("choose totp or password: one PAM-less password host, one "
                               "TOTP host (unicorn is either)")
        self.totp = totp
        self.totp_secret = new_secret() if totp else ""
        self._last_step = 0  # the last TOTP step handed out by next_code()
        self.password_user = f"{self.prefix}pw" if password else ""
        self.password = secrets.token_hex(8) if password else ""
        self.key_passphrase = key_passphrase
        self._made = Made()  # outside the folder: link, PAM file, user

    # paths -----------------------------------------------------------------
    @property
    def ssh_config(self) -> Path:
        return self.dir / "ssh_config"

    @property
    def known_hosts(self) -> Path:
        return self.dir / "known_hosts"

    @property
    def key(self) -> Path:
        return self.dir / "id_ed25519"

    @property
    def locked_key(self) -> Path:
        """The sandbox key encrypted with ``key_passphrase`` (when given)."""
        return self.dir / "id_locked"

    @property
    def totp_usersfile(self) -> Path:
        return self.dir / "unicorn" / "oath-users"

    def totp_code(self, step_offset: int = 0) -> str:
        """The TOTP code of unicorn's user for the current time step (plus step_offset)."""
        if not self.totp:
            raise SandboxError("this sandbox has no TOTP jump host (Sandbox(totp=True))")
        return _totp_code(self.totp_secret, int(time.time()) // STEP + step_offset)

    def next_code(self) -> str:
        """A code unicorn will take: pam_oath refuses a step used before (and those before
        it), so each call gives the step after the last one given (up to AHEAD steps ahead of
        the clock, within pam_oath's window; beyond that it waits for the clock)."""
        if not self.totp:
            raise SandboxError("this sandbox has no TOTP jump host (Sandbox(totp=True))")
        now = int(time.time()) // STEP
        step = max(now, self._last_step + 1)
        if step > now + AHEAD:
            time.sleep(max(0.0, (step - AHEAD) * STEP - time.time()) + 0.05)
        self._last_step = step
        return _totp_code(self.totp_secret, step)

    def home(self, name: str) -> Path:
        """The HOME of sessions on host name."""
        return self.dir / f"home-{name}"

    # lifecycle -------------------------------------------------------------
    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Sandbox:
        """Build everything; on failure remove it again and raise SandboxError."""
        if self._started:
            return self
        self._started, self._owner = True, os.getpid()
        atexit.register(self.stop)
        t0 = time.monotonic()
        try:
            self._check_tools()
            if self._base_dir is None:
                self.dir = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-sandbox-"))
                self._made_dir = True
            else:
                self.dir.mkdir(parents=True, exist_ok=True)
            self.dir = self.dir.resolve()
            if re.search(r"[\s\"'\\]", str(self.dir)):
                raise SandboxError(f"sandbox folder {self.dir} must not contain spaces or quotes")
            addresses = self._make_network() if self.netns else self._loopback_addresses()
            self._write_files(addresses)
            for name in HOSTS:
                self.start_sshd(name)
            if self._want_jupyter:
                self.start_jupyter()
        except BaseException as exc:
            self.stop()
            if isinstance(exc, Exception) and not isinstance(exc, SandboxError):
                raise SandboxError(f"sandbox setup failed: {exc!r}") from exc
            raise
        mode = "network namespaces" if self.netns else "loopback"
        self._log(f"sandbox ready in {time.monotonic() - t0:.2f} s ({mode}) in {self.dir}")
        return self

    def stop(self) -> None:
        """Remove everything start() made; safe to call twice."""
        if not self._started or os.getpid() != self._owner:
            return
        self._started = False
        atexit.unregister(self.stop)
        self.stop_jupyter()
        for name in list(self.hosts):
            self.stop_sshd(name)
        self._made.undo()
        pids = _pids_with_env(MARKER, str(self.dir)) if self.dir.is_absolute() else set()
        for ns in self._namespaces:
            pids.update(int(p) for p in _out(["ip", "netns", "pids", ns]).split() if p.isdigit())
        _kill_pids(pids)
        if self._root_link:
            subprocess.run(["ip", "link", "del", self._root_link], capture_output=True)
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if self._namespaces or self.route_added:
            self._remove_route()
        self._namespaces, self._root_link = [], None
        if self._made_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
            self._made_dir = False
        self._log("sandbox stopped")

    # building --------------------------------------------------------------
    def _check_tools(self) -> None:
        if not Path(SSHD).exists():
            raise SandboxError(
                f"OpenSSH server not found ({SSHD}); install it with: "
                "apt-get install -y openssh-server"
            )
        if shutil.which("ssh-keygen") is None:
            raise SandboxError(
                "ssh-keygen not found; install it: apt-get install -y openssh-client"
            )
        if self.netns and os.geteuid() != 0:
            raise SandboxError("network namespaces need root; use netns=False for loopback mode")
        if self.totp:
            check_totp_tools()
        if self.password and os.geteuid() != 0:
            raise SandboxError("the password host needs root (it adds a user)")

    def _loopback_addresses(self) -> dict[str, tuple[str, int]]:
        ports: dict[str, tuple[str, int]] = {}
        for name in HOSTS:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports[name] = ("127.0.0.1", s.getsockname()[1])
        return ports

    def _unreachable_route(self) -> str | None:
        out = _out(["ip", "-4", "route", "show", "type", "unreachable"])
        return next((ln for ln in out.splitlines() if ln.split()[1:2] == [NET_RANGE]), None)

    def _remove_route(self) -> None:
        """Remove the unreachable route if a sandbox made it and no other sandbox uses it.

        Sandboxes may run side by side: the last one out removes it, whoever added it.
        """
        route = self._unreachable_route()
        others = _out(["ip", "-4", "-o", "addr", "show", "to", NET_RANGE]).strip()
        if route and f"proto {ROUTE_PROTO}" in route and not others:
            argv = ["ip", "route", "del", "unreachable", NET_RANGE, "proto", ROUTE_PROTO]
            subprocess.run(argv, capture_output=True)

    def _make_network(self) -> dict[str, tuple[str, int]]:
        """Namespaces and veths: root <-> unicorn on subnet A, unicorn <-> beast on subnet B."""
        if self._unreachable_route() is None:
            add = ["ip", "route", "add", "unreachable", NET_RANGE, "proto", ROUTE_PROTO]
            self.route_added = subprocess.run(add, capture_output=True).returncode == 0
        used = _run(["ip", "-4", "-o", "addr", "show"]).stdout + _run(["ip", "-4", "route"]).stdout
        taken = {(int(x), int(y) // 4) for x, y in re.findall(r"10\.213\.(\d+)\.(\d+)", used)}
        # /30 subnets: A (seen from the root namespace) in 10.213.0-127, B in 128-255: B is
        # never routed from here, even when other sandboxes run.
        slots = [(x, k) for x in range(128) for k in range(64) if (x, k) not in taken]
        if not slots:
            raise SandboxError("no free subnet left in 10.213.0.0/16; remove stale sandboxes")
        (x, k), y = secrets.choice(slots), 128 + secrets.randbelow(128)
        a, b = f"10.213.{x}.{4 * k}", f"10.213.{y}.{4 * secrets.randbelow(64)}"
        self.subnet_a, self.subnet_b = f"{a}/30", f"{b}/30"

        def ip(net: str, n: int) -> str:  # n-th address of the /30 net
            return f"{net.rsplit('.', 1)[0]}.{int(net.rsplit('.', 1)[1]) + n}"

        p, uns, bns = self.prefix, f"{self.prefix}-unicorn", f"{self.prefix}-beast"
        for ns in (uns, bns):
            _run(["ip", "netns", "add", ns])
            self._namespaces.append(ns)
            _run(["ip", "-n", ns, "link", "set", "lo", "up"])
        _run(["ip", "link", "add", f"{p}-ru", "type", "veth", "peer", "name", f"{p}-ur",
              "netns", uns])  # fmt: skip
        self._root_link = f"{p}-ru"
        _run(["ip", "-n", uns, "link", "add", f"{p}-ub", "type", "veth", "peer", "name",
              f"{p}-bu", "netns", bns])  # fmt: skip
        for where, dev, addr in (
            (None, f"{p}-ru", ip(a, 1)),
            (uns, f"{p}-ur", ip(a, 2)),
            (uns, f"{p}-ub", ip(b, 1)),
            (bns, f"{p}-bu", ip(b, 2)),
        ):
            cmd = ["ip"] if where is None else ["ip", "-n", where]
            _run([*cmd, "addr", "add", f"{addr}/30", "dev", dev])
            _run([*cmd, "link", "set", dev, "up"])
        # unicorn must not route between its links: beast only via its sshd
        _run(["ip", "netns", "exec", uns, "sysctl", "-qw", "net.ipv4.ip_forward=0"])
        self._log(f"namespaces {uns}, {bns}; subnets {self.subnet_a}, {self.subnet_b}")
        return {"unicorn": (ip(a, 2), 22), "beast": (ip(b, 2), 22)}

    def _session_env(self, name: str) -> dict[str, str]:
        home = self.home(name)
        return {
            "HOME": str(home),
            "XDG_DATA_HOME": str(home / ".local" / "share"),
            "PATH": SESSION_PATH,
            "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
            MARKER: str(self.dir),
        }

    def _write_files(self, addresses: dict[str, tuple[str, int]]) -> None:
        def keygen(path: Path, comment: str) -> None:
            _run(["ssh-keygen", "-t", "ed25519", "-N", "", "-q", "-C", comment, "-f", str(path)])

        keygen(self.key, f"jupyter-tunnel-sandbox-{self.prefix}")
        auth = self.dir / "authorized_keys"
        auth.write_text(self.key.with_suffix(".pub").read_text())
        known, cfg = [], []
        for name in HOSTS:
            addr, port = addresses[name]
            hdir = self.dir / name
            hdir.mkdir(exist_ok=True)
            host = SandboxHost(name, addr, port, f"{self.prefix}-{name}" if self.netns else None,
                               hdir / "ssh_host_ed25519_key", hdir / "sshd_config")  # fmt: skip
            keygen(host.host_key, f"{name}@sandbox")
            setenv = " ".join(f'"{k}={v}"' for k, v in self._session_env(name).items())
            head, tail = self._login_lines(name, host)
            host.sshd_config.write_text(
                f"# jupyter_tunnel sandbox host {name}\n{head}"
                f"ListenAddress {addr}:{port}\nHostKey {host.host_key}\nPidFile none\n"
                "UsePAM no\nStrictModes no\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
                f"AuthorizedKeysFile {auth}\nAllowTcpForwarding yes\n"
                "PermitRootLogin prohibit-password\nLogLevel VERBOSE\n"
                "MaxStartups 100:30:200\nMaxSessions 100\nPrintMotd no\nPrintLastLog no\n"
                "X11Forwarding no\nSubsystem sftp internal-sftp\n"
                f"SetEnv {setenv}\n{tail}"
            )
            home = self.home(name)
            (home / ".local" / "share").mkdir(parents=True, exist_ok=True)
            (home / ".jupyter").mkdir(exist_ok=True)
            pub = host.host_key.with_suffix(".pub").read_text().split()
            known.append(f"{addr if port == 22 else f'[{addr}]:{port}'} {pub[0]} {pub[1]}\n")
            self.hosts[name] = host
            cfg.append((name, host, ""))
        cfg.append(("beast-via-unicorn", self.hosts["beast"], "  ProxyJump unicorn\n"))
        users, keys = {}, {}
        if self.password_user:
            cfg.append(("unicorn-pw", self.hosts["unicorn"], ""))
            users["unicorn-pw"] = self.password_user
        if self.key_passphrase is not None:
            shutil.copy(self.key, self.locked_key)
            shutil.copy(self.key.with_suffix(".pub"), self.locked_key.with_suffix(".pub"))
            _run(["ssh-keygen", "-p", "-q", "-P", "", "-N", self.key_passphrase,
                  "-f", str(self.locked_key)])  # a test passphrase: argv is fine here
            cfg.append(("unicorn-locked", self.hosts["unicorn"], ""))
            keys["unicorn-locked"] = self.locked_key
        self.known_hosts.write_text("".join(known))
        self.ssh_config.write_text("".join(
            f"Host {alias}\n  HostName {h.address}\n  Port {h.port}\n"
            f"  User {users.get(alias, self.user)}\n"
            f"  IdentityFile {keys.get(alias, self.key)}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n  StrictHostKeyChecking yes\n"
            f"  BatchMode yes\n  ConnectTimeout 10\n{extra}\n"
            for alias, h, extra in cfg
        ))  # fmt: skip
        beast = self.home("beast")
        # a login shell on beast finds jupyter, a plain `ssh beast cmd` does not
        bindir = shlex.quote(str(Path(sys.executable).parent))
        (beast / ".profile").write_text(f'PATH={bindir}:"$PATH"\nexport PATH\n')
        server_cfg = {"allow_root": True, "root_dir": str(beast), "open_browser": False}
        (beast / ".jupyter" / "jupyter_server_config.json").write_text(
            json.dumps({"ServerApp": server_cfg}, indent=1)
        )
        (beast / ".jupyter" / "labconfig").mkdir(exist_ok=True)
        (beast / ".jupyter" / "labconfig" / "page_config.json").write_text(json.dumps(
            {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}
        ))  # fmt: skip

    def _login_lines(self, name: str, host: SandboxHost) -> tuple[str, str]:
        """sshd_config lines of the login options for host ``name``: first (they win) and
        last (Match blocks); makes the PAM service, usersfile and user they need."""
        if name != "unicorn":
            return "", ""
        head = tail = ""
        if self.totp:
            self.totp_usersfile.touch(mode=0o600)
            self.totp_usersfile.write_text(f"HOTP/T30/6 {self.user} - {self.totp_secret}\n")
            host.program = self._made.link_sshd(f"sshd-{self.prefix}-unicorn", SSHD,
                                                self.totp_usersfile)
            head = totp_sshd_lines()
        if self.password_user:
            self._made.add_user(self.password_user, self.password, self.home(name))
            tail = password_sshd_lines(self.password_user)
        return head, tail

    # processes -------------------------------------------------------------
    def _ns_argv(self, name: str) -> list[str]:
        ns = self.hosts[name].netns
        return ["ip", "netns", "exec", ns] if ns else []

    def _daemon_env(self) -> dict[str, str]:
        """The environment of the sandbox's sshd: its own, never the caller's.

        sshd hands its environment to each per-connection child it re-executes, which shows
        it in /proc/PID/environ until its first setproctitle: with the caller's environment,
        a test's checks for processes carrying its private JUPYTER_RUNTIME_DIR would race
        with the sandbox's own sshd.
        """
        return {"PATH": DAEMON_PATH, "LANG": "C.UTF-8", MARKER: str(self.dir)}

    def env_for(self, name: str) -> dict[str, str]:
        """The environment a process on host name sees (as in an ssh session)."""
        pw = pwd.getpwuid(os.getuid())
        env = {"USER": pw.pw_name, "LOGNAME": pw.pw_name, "SHELL": pw.pw_shell or "/bin/sh"}
        env.update(self._session_env(name))
        return env

    def env_for_beast(self) -> dict[str, str]:
        """The environment a process on beast sees."""
        return self.env_for("beast")

    def run_in(
        self, name: str, argv: list[str], **popen_kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run argv on host name (in its namespace; env defaults to the host's)."""
        popen_kwargs.setdefault("env", self.env_for(name))
        popen_kwargs.setdefault("check", False)
        return subprocess.run([*self._ns_argv(name), *argv], **popen_kwargs)

    def popen_in(self, name: str, argv: list[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start argv on host name (in its namespace) and return at once."""
        popen_kwargs.setdefault("env", self.env_for(name))
        return subprocess.Popen([*self._ns_argv(name), *argv], **popen_kwargs)

    def ssh_argv(self, alias: str, *command: str) -> list[str]:
        """An ``ssh`` command line for alias (unicorn, beast-via-unicorn...) with our config."""
        return ["ssh", "-F", str(self.ssh_config), alias, *command]

    def start_sshd(self, name: str) -> None:
        """Start host name's sshd (again), same address, port and host key."""
        host = self.hosts[name]
        if host._proc is not None and host._proc.poll() is None:
            return
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        logfile = self.dir / name / "sshd.log"
        mark = logfile.stat().st_size if logfile.exists() else 0
        with open(logfile, "ab") as err:
            host._proc = subprocess.Popen(
                [*self._ns_argv(name), host.program, "-D", "-e", "-f", str(host.sshd_config)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                env=self._daemon_env(), start_new_session=True,
            )  # fmt: skip
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if host._proc.poll() is not None:
                raise SandboxError(f"sshd of {name} exited ({host._proc.returncode}):\n"
                                   + _tail(logfile))  # fmt: skip
            with open(logfile, "rb") as f:
                f.seek(mark)
                listening = b"Server listening on" in f.read()
            if listening and host.netns and name == "beast":
                return  # not reachable from here; the log line is enough
            if listening:
                try:
                    socket.create_connection((host.address, host.port), timeout=1).close()
                    return
                except OSError:
                    pass
            time.sleep(0.02)
        raise SandboxError(f"sshd of {name} not listening after 10 s:\n{_tail(logfile)}")

    def stop_sshd(self, name: str, *, kill_sessions: bool = True) -> None:
        """Stop host name's sshd and, unless kill_sessions is False, drop its connections."""
        host = self.hosts[name]
        proc, host._proc = host._proc, None
        if proc is not None:
            _terminate(proc)
        if kill_sessions:
            _kill_pids(self._connection_pids(name))

    def kill_sessions(self, name: str) -> int:
        """Kill host name's per-connection sshd processes (SIGKILL), as a crash or an admin
        would; its listener stays up. Returns how many were killed."""
        pids = self._connection_pids(name)
        _kill_pids(pids)
        return len(pids)

    def cut_link(self) -> None:
        """Take the link between this machine and unicorn down: a silent outage (network
        namespaces only)."""
        self._set_link("down")

    def restore_link(self) -> None:
        """Bring the link to unicorn back up."""
        self._set_link("up")

    def _set_link(self, state: str) -> None:
        if not self._root_link:
            raise SandboxError("cutting the link needs the network-namespace sandbox (root)")
        _run(["ip", "link", "set", self._root_link, state])

    def pause_sessions(self, name: str) -> None:
        """Freeze host name's SSH connections (SIGSTOP): a silent outage, nothing is closed."""
        for pid in self._connection_pids(name):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGSTOP)

    def resume_sessions(self, name: str) -> None:
        """Let frozen connections of host name go on (SIGCONT)."""
        for pid in self._connection_pids(name):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)

    def _connection_pids(self, name: str) -> set[int]:
        """Pids holding a connection accepted by host name's sshd: its per-client processes.

        (sshd overwrites its environ for the process title, so the env marker misses them.)
        """
        host = self.hosts[name]
        local = f"{socket.inet_aton(host.address)[::-1].hex().upper()}:{host.port:04X}"
        tcp = self.run_in(name, ["cat", "/proc/net/tcp"], capture_output=True, text=True).stdout
        rows = [row.split() for row in tcp.splitlines()[1:]]
        inodes = {f"socket:[{r[9]}]" for r in rows if r[1] == local and r[3] != "0A"}
        pids = set()
        for entry in os.scandir("/proc") if inodes else ():
            with contextlib.suppress(OSError):
                if entry.name.isdigit() and any(
                    os.readlink(fd.path) in inodes for fd in os.scandir(f"{entry.path}/fd")
                ):
                    pids.add(int(entry.name))
        return pids

    def start_jupyter(self, *, token: str | None = None) -> SandboxJupyter:
        """Start a Jupyter server on beast (new random token when None); wait until it answers."""
        self.stop_jupyter()
        token = token or secrets.token_hex(24)
        found = self.run_in(
            "beast", [sys.executable, "-c", _FREE_PORT, "18000", "19999"],
            capture_output=True, text=True,
        ).stdout.strip()  # fmt: skip
        if not found.isdigit():
            raise SandboxError("no free port for Jupyter in 18000-19999 on beast")
        port, home = int(found), self.home("beast")
        token_file = self.dir / "beast" / "jupyter-token"
        token_file.touch(mode=0o600)
        token_file.write_text(token)
        env = {**self.env_for_beast(), "JUPYTER_TOKEN_FILE": str(token_file)}
        argv = [sys.executable, "-m", "jupyter_server", "--ip=127.0.0.1", f"--port={port}",
                "--ServerApp.port_retries=0", "--ServerApp.base_url=/", "--no-browser",
                f"--ServerApp.root_dir={home}"]  # fmt: skip
        if os.geteuid() == 0:
            argv.append("--allow-root")
        logfile = self.dir / "beast" / "jupyter.log"
        with open(logfile, "ab") as out:
            self._jupyter_proc = proc = subprocess.Popen(
                [*self._ns_argv("beast"), *argv], cwd=home, env=env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait = self.run_in(
            "beast", [sys.executable, "-c", _WAIT_JUPYTER, str(port), str(proc.pid), "60"],
            input=token, text=True, capture_output=True,
        )  # fmt: skip
        if wait.returncode != 0:
            self.stop_jupyter()
            why = {2: "did not answer within 60 s", 3: "exited"}.get(wait.returncode, wait.stderr)
            raise SandboxError(f"Jupyter server on beast {why}:\n{_tail(logfile)}")
        runtime = home / ".local" / "share" / "jupyter" / "runtime"
        self.jupyter = SandboxJupyter(port, token, proc.pid, "/", home, runtime)
        self._log(f"jupyter on beast: 127.0.0.1:{port} pid {proc.pid}")
        return self.jupyter

    def stop_jupyter(self) -> None:
        """Stop the Jupyter server on beast (SIGTERM, then SIGKILL) and remove its files."""
        proc, self._jupyter_proc, self.jupyter = self._jupyter_proc, None, None
        if proc is None:
            return
        _terminate(proc)
        runtime = self.home("beast") / ".local" / "share" / "jupyter" / "runtime"
        for leftover in (f"jpserver-{proc.pid}.json", f"jpserver-{proc.pid}-open.html"):
            with contextlib.suppress(OSError):
                (runtime / leftover).unlink()


def main() -> None:
    """Start a sandbox, print how to reach it, wait for Ctrl-C, remove it."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m jupyter_tunnel.sandbox")
    parser.add_argument("--loopback", action="store_true", help="no namespaces: sshd on 127.0.0.1")
    parser.add_argument("--no-jupyter", action="store_true", help="no Jupyter server on beast")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started in background
    try:
        sandbox = Sandbox(netns=False if args.loopback else None, jupyter=not args.no_jupyter,
                          log=lambda m: print(m, file=sys.stderr)).start()  # fmt: skip
    except SandboxError as exc:
        sys.exit(f"error: {exc}")
    with sandbox:
        print(f"ssh config: {sandbox.ssh_config}")
        for h in sandbox.hosts.values():
            print(f"  {h.name}: {h.address}:{h.port} netns={h.netns or '-'}")
        if sandbox.jupyter:
            j = sandbox.jupyter
            print(f"  jupyter on beast: 127.0.0.1:{j.port} token={j.token}")
        print(f"try: ssh -F {sandbox.ssh_config} beast-via-unicorn hostname\nCtrl-C to stop")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


__all__ = ["SSHD", "Sandbox", "SandboxError", "SandboxHost", "SandboxJupyter", "main"]

if __name__ == "__main__":
    main()

