"""The ssh ControlMaster behind the OpenSSH backend: where it lives, how it is started and
shared, how it is asked for remote forwards and commands, and how it ends.

Files, per chain of hops (``key``), in a 0700 folder under the Jupyter runtime dir:

- ``KEY``: the master's control socket;
- ``KEY.lock``: held while a master is checked, started or ended, so two tunnels to the
  same hosts never start two masters, and a second one reuses the first's (no new login);
- ``KEY.users/PID-START-TOKEN``: one file per tunnel using the master; the last to leave
  ends it (``-O exit``);
- ``KEY.conf``: the ssh config it runs with: the user's config first (its values win, as
  ssh takes the first value it reads), then our defaults (``BatchMode``, ``ConnectTimeout``,
  ``ServerAlive*`` from the traits).  ssh passes ``-F`` on to its ProxyJump helpers, so the
  jump hosts get the same defaults.

The master runs with ``ControlPersist``: it leaves our process tree once logged in, and
stays up while any tunnel holds a control connection to it.  If every such process dies
without ending it, it exits by itself ``PERSIST`` seconds later.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import queue
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from .. import procinfo
from ..errors import ConfigError, HopTimeout, HopUnreachable
from ..spec import check_host, check_user
from ..sshconfig import SYSTEM_CONFIG, ResolvedHop
from .base import NoticeCallback, ProgressCallback
from .openssh_errors import LoginTrace

SSH = "ssh"
#: seconds a master stays up after the last tunnel holding it vanished without ending it
PERSIST = 10
#: in the environment of the ssh processes a master start runs, to find them again
MARKER = "JUPYTER_TUNNEL_SSH"
# the config path goes into a shell command that ssh builds for ProxyJump, and the control
# socket path must fit in a sockaddr_un with ssh's 17-character temporary suffix
_SAFE_PATH = re.compile(r"[A-Za-z0-9_./+@-]+")
_MAX_DIR = 69  # 69 + 1 + 16 + 17 = 103: macOS's limit


def _secure_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.lstat()
    if not path.is_dir() or path.is_symlink() or info.st_uid != os.getuid():
        raise ConfigError(f"{path} must be a folder of yours (not a link): remove it")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def control_dir() -> Path:
    """The 0700 folder of the control sockets: ``<runtime dir>/jupyter_tunnel-ssh``, or a
    folder in /tmp when that path is too long for a socket or has characters a shell
    would read."""
    from jupyter_core.paths import jupyter_runtime_dir

    runtime = Path(jupyter_runtime_dir()).absolute()
    preferred = runtime / "jupyter_tunnel-ssh"
    if _SAFE_PATH.fullmatch(str(preferred)) and len(str(preferred)) <= _MAX_DIR:
        return _secure_dir(preferred)
    tmp = tempfile.gettempdir()
    if not _SAFE_PATH.fullmatch(tmp) or len(tmp) > 40:
        tmp = "/tmp"  # noqa: S108 - a 0700 folder of ours, checked by _secure_dir
    digest = hashlib.sha256(str(runtime).encode()).hexdigest()[:10]
    return _secure_dir(Path(tmp) / f"jupyter_tunnel-{os.getuid()}-{digest}")


def chain_key(chain: list[ResolvedHop]) -> str:
    """Names the master of a chain: the same hops, users and config, the same master."""
    data = [chain[-1].config_file or "", [[h.alias, h.hostname, h.port, h.user] for h in chain]]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def ssh_env(marker: str | None = None) -> dict[str, str]:
    """The environment of our ssh processes: never ask for a passphrase in a window."""
    env = dict(os.environ)
    env["SSH_ASKPASS_REQUIRE"] = "never"
    if marker:
        env[MARKER] = marker
    return env


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def destination(chain: list[ResolvedHop]) -> list[str]:
    """``-J`` with every jump host (as resolved: user, alias, port), then the target.

    The names were validated (no leading ``-``, no spaces or commas) and ``--`` ends the
    options, so nothing here can be read by ssh as an option.
    """
    for hop in chain:  # validated when parsed; checked again where it meets argv
        check_host(hop.alias)
        check_user(hop.user)
    target = chain[-1]
    jumps = ",".join(f"{h.user}@{_bracket(h.alias)}:{h.port}" for h in chain[:-1])
    return [*(["-J", jumps] if jumps else []), "-l", target.user, "-p", str(target.port),
            "--", target.alias]


class MasterFiles:
    """The files of one chain's master."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder = folder
        self.socket = folder / key
        self.lock = folder / f"{key}.lock"
        self.users = folder / f"{key}.users"
        self.config = folder / f"{key}.conf"

    @contextlib.contextmanager
    def locked(self, timeout: float = 120.0, cancelled: Callable[[], bool] = lambda: False
               ) -> Iterator[None]:
        """Hold this master's lock (between processes and threads).  Raise
        :class:`HopTimeout` if another holds it ``timeout`` seconds (a login under way
        through slow hops takes a while), :class:`HopUnreachable` once ``cancelled()``."""
        try:
            fd = os.open(self.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:  # the control folder was removed, or cannot be written
            raise HopUnreachable(f"cannot use {self.lock}: {exc}") from None
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if cancelled():
                        raise HopUnreachable("the tunnel was closed") from None
                    if time.monotonic() > deadline:
                        raise HopTimeout(
                            f"another tunnel to the same hosts held their SSH connection's lock "
                            f"for {timeout:g} s (still logging in, or stopped?): try again, or "
                            f"close it") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    def write_config(self, chain: list[ResolvedHop], interval: int, count: int,
                     timeout: float) -> None:
        """The ssh config of the master and its jump helpers (see the module doc)."""
        lines = ["# written by jupyter_tunnel: host key checking and no multiplexing of its "
                 "own first, then your ssh config (its values win), then our defaults"]
        for hop in {h.alias: h for h in chain}.values():
            # as resolved for the in-process backend (so `Match exec` cannot differ): a new
            # key is recorded with accept-new (or `no`), else an unknown key is refused
            strict = "accept-new" if hop.strict_host_key_checking in ("accept-new", "no") \
                else "yes"
            lines += [f"Host {hop.alias}", f"  StrictHostKeyChecking {strict}"]
        # the jump helpers must not start (or use) masters of the user's own ControlPath;
        # forwards of the user's config (LocalForward, DynamicForward …) are not ours to open
        lines += ["Host *", "  ControlMaster no", "  ControlPath none",
                  "  ClearAllForwardings yes"]
        config = chain[-1].config_file
        includes = [config] if config else [str(Path.home() / ".ssh" / "config"), SYSTEM_CONFIG]
        lines.append("Host *")
        for path in includes:
            if re.search(r'["*?\[\]\n]', path):
                raise ConfigError(f"the ssh config path {path!r} cannot be handed to ssh: "
                                  "rename it, or use backend 'sshtunnel'")
            lines.append(f'Include "{path}"')
        lines += ["Host *", "  BatchMode yes", f"  ConnectTimeout {math.ceil(timeout)}",
                  f"  ServerAliveInterval {interval}", f"  ServerAliveCountMax {count}", ""]
        tmp = self.config.with_suffix(".conf.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines))
        os.replace(tmp, self.config)

    def forget(self) -> None:
        """Remove the config and the users folder of a master that ended (the lock file
        stays: another process may wait on it)."""
        with contextlib.suppress(OSError):
            self.config.unlink()
        for entry in self.users.iterdir() if self.users.is_dir() else []:
            with contextlib.suppress(OSError):
                entry.unlink()
        with contextlib.suppress(OSError):
            self.users.rmdir()

    # the tunnels that use the master --------------------------------------------
    def register(self, user: str, remote: list[str] | None = None) -> None:
        """Count a tunnel (``user``) as using the master, with the remote forwards it asked
        of it (``remote``: ``-R`` specs)."""
        _secure_dir(self.users)
        path = self.users / user
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(remote or [], fh)
        os.replace(tmp, path)

    def unregister(self, user: str) -> int:
        """Stop counting ``user``; return how many live others still use the master."""
        with contextlib.suppress(FileNotFoundError):
            (self.users / user).unlink()
        return len(live_users(self.users))

    def remote_of_others(self, user: str) -> dict[str, int]:
        """The ``-R`` specs other live tunnels asked of the master, with their pids."""
        held: dict[str, int] = {}
        for entry, pid in live_users(self.users).items():
            if entry.name == user:
                continue
            with contextlib.suppress(OSError, ValueError):
                for spec in json.loads(entry.read_text()):
                    held[str(spec)] = pid
        return held


def live_users(folder: Path, *, but_pid: int | None = None) -> dict[Path, int]:
    """The files of ``folder`` (a master's users) whose tunnel process still runs, with its
    pid; the files of dead ones are removed.  ``but_pid``: that process counts as dead."""
    found: dict[Path, int] = {}
    for entry in folder.iterdir() if folder.is_dir() else []:
        if entry.suffix == ".tmp":
            continue
        parts = entry.name.split("-")
        try:
            pid = int(parts[0])
            started = None if parts[1] == "None" else int(parts[1])  # None: no /proc here
            alive = pid != but_pid and procinfo.is_alive(pid, started)
        except (IndexError, ValueError):
            alive = False
        if alive:
            found[entry] = pid
        elif but_pid is None:
            with contextlib.suppress(OSError):
                entry.unlink()  # a tunnel whose process died without leaving
    return found


def control(files: MasterFiles, alias: str, *args: str, timeout: float = 10.0
            ) -> subprocess.CompletedProcess[str]:
    """``ssh -S SOCKET -O …`` (no config needed: the master has it)."""
    argv = [SSH, "-F", os.devnull, "-S", str(files.socket), *args, "--", alias]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=ssh_env(), start_new_session=True,
                          check=False)


def check(files: MasterFiles, alias: str) -> int | None:
    """The pid of a live master (``-O check``), or None."""
    if not files.socket.exists():
        return None
    try:
        result = control(files, alias, "-O", "check")
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"Master running \(pid=(\d+)\)", result.stderr)
    return int(match.group(1)) if result.returncode == 0 and match else None


def remove_stale(files: MasterFiles) -> None:
    """Remove a control socket no master listens on any more (one that was killed): ssh
    would not start a master over it."""
    import socket

    if not files.socket.exists():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2)
        probe.connect(str(files.socket))
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            files.socket.unlink()
    except OSError:
        pass
    finally:
        probe.close()


def processes_with(marker: str) -> list[int]:
    """Pids of this user's processes started with ``MARKER=marker`` in their environment."""
    needle, found = f"\0{MARKER}={marker}\0".encode(), []
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else []:
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in b"\0" + Path(entry.path, "environ").read_bytes():
                    found.append(int(entry.name))
    return found


class StderrLog:
    """Reads an ssh's stderr to its end, in a thread: line by line during the login (for
    progress and errors), then, once ssh went to the background, in large reads that keep
    only the last few KB (a master run with -v logs every channel): why it ended."""

    TAIL = 16384

    def __init__(self, stream: IO[bytes], trace: LoginTrace) -> None:
        self.trace = trace
        self.events: queue.Queue[tuple[str, int]] = queue.Queue()
        self._tail = b""
        self.forked = threading.Event()
        self.done = threading.Event()
        threading.Thread(target=self._read, args=(stream,), daemon=True,
                         name="jupyter_tunnel-ssh-stderr").start()

    @property
    def tail(self) -> list[str]:
        """What ssh said last, without its debug lines."""
        lines = self._tail.decode(errors="replace").splitlines()[1:]  # the first may be cut
        return [ln.rstrip("\r") for ln in lines if not ln.startswith("debug")]

    def _read(self, stream: IO[bytes]) -> None:
        fd = stream.fileno()
        pending = b""
        try:
            while data := os.read(fd, 65536):
                if self.forked.is_set():
                    self._tail = (self._tail + data)[-self.TAIL:]
                    continue
                pending += data
                *lines, pending = pending.split(b"\n")
                for index, raw in enumerate(lines):
                    line = raw.decode(errors="replace").rstrip("\r")
                    hop = self.trace.feed(line)
                    if hop is not None:
                        self.events.put(("progress", hop))
                    if "disabling multiplexing" in line:  # it would stay a plain ssh
                        self.events.put(("exit", 255))
                    if self.trace.forked:
                        self._tail = b"\n" + b"\n".join([*lines[index + 1:], pending])
                        self.forked.set()
                        break
        except OSError:
            pass
        finally:
            if pending and not self.forked.is_set():
                self.trace.feed(pending.decode(errors="replace").rstrip("\r"))
            self.done.set()
            self.events.put(("eof", 0))
            with contextlib.suppress(OSError):
                stream.close()


class Launch:
    """One run of ``ssh -M``: log in through the chain, then leave a master behind."""

    def __init__(self, files: MasterFiles, chain: list[ResolvedHop]) -> None:
        self.files, self.chain = files, chain
        self.marker = os.urandom(8).hex()
        self.argv = [SSH, "-F", str(files.config), "-v", "-N", "-M", "-S", str(files.socket),
                     "-o", f"ControlPersist={PERSIST}", "-o", "ExitOnForwardFailure=yes",
                     "-o", "ClearAllForwardings=yes", "-o", "BatchMode=yes",
                     *destination(chain)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: StderrLog | None = None

    def run(self, progress: ProgressCallback | None, timeout: float,
            notice: NoticeCallback | None) -> None:
        """Start ssh and wait until the master is up; raise a typed error naming the hop."""
        chain = self.chain
        if progress:
            progress(0, chain[0])
        self.proc = proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env=ssh_env(self.marker), start_new_session=True)
        assert proc.stderr is not None
        self.log = log = StderrLog(proc.stderr, LoginTrace(chain))
        threading.Thread(target=lambda: log.events.put(("exit", proc.wait())), daemon=True,
                         name="jupyter_tunnel-ssh-wait").start()
        per_hop = [2 * (h.connect_timeout or timeout) + 5 for h in chain]
        deadline = time.monotonic() + sum(per_hop)
        try:
            status = self._wait(log, deadline, progress)
        except BaseException:
            self.kill()
            raise
        if status == 0:
            log.forked.wait(2)  # what it said before it went to the background
            if notice:
                for message in log.trace.notices:
                    notice(message)
            return
        self.kill()
        log.done.wait(2)  # a jump helper may hold the pipe a moment longer
        raise log.trace.error(status, timeout)

    def _wait(self, log: StderrLog, deadline: float, progress: ProgressCallback | None
              ) -> int:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                hop = log.trace.failing()
                raise HopTimeout(f"ssh did not finish logging in to {hop.label} in time",
                                 hop=hop.alias)
            try:
                kind, value = log.events.get(timeout=left)
            except queue.Empty:
                continue
            if kind == "exit":
                return value
            if kind == "progress" and progress:
                progress(value, self.chain[value])

    def kill(self) -> None:
        """End the login under way (ssh and its jump helpers share its process group)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, 15)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(3)
        for pid in processes_with(self.marker):
            with contextlib.suppress(OSError):
                os.kill(pid, 15)

    def processes(self, master_pid: int) -> list[dict[str, Any]]:
        """``{pid, started, cmdline}`` of the master and its jump helpers."""
        pids = [master_pid] + [p for p in processes_with(self.marker) if p != master_pid]
        found = [procinfo.identity(pid) for pid in pids]
        return [item for item in found if item is not None]


def end(files: MasterFiles, alias: str, children: list[dict[str, Any]],
        timeout: float = 3.0) -> None:
    """``-O exit``, then wait for the master and its helpers to be gone (SIGTERM those left,
    if they still are the very processes recorded)."""
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        control(files, alias, "-O", "exit", timeout=timeout)
    deadline = time.monotonic() + timeout
    for child in children:
        pid, started = int(child["pid"]), int(child["started"])
        while procinfo.is_alive(pid, started) and time.monotonic() < deadline:
            time.sleep(0.02)
        if procinfo.is_same(pid, started, list(child["cmdline"])):
            with contextlib.suppress(OSError):
                os.kill(pid, 15)


def unreachable(hop: ResolvedHop, what: str) -> HopUnreachable:
    """The error for a master that is gone."""
    return HopUnreachable(f"the SSH connection to {hop.label} is down ({what})", hop=hop.alias)
