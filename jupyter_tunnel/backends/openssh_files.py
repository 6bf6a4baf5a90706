"""The files of the OpenSSH backend's masters, in one 0700 folder per user and runtime dir.

Per chain of hops (``KEY``, see :func:`chain_key`):

- ``KEY``: the master's control socket;
- ``KEY.lock``: held while a master is checked, started, used for a remote forward, or
  ended, and while anyone reads or changes its users, so two tunnels to the same hosts
  never start two masters, and a cleanup never ends a master a tunnel is attaching to;
- ``KEY.users/PID-START-TOKEN``: one file per tunnel using the master; the last to leave
  ends it (``-O exit``);
- ``KEY.conf``: the ssh config it runs with;
- ``KEY.ask`` and ``KEY.askpass``: while a login that can ask runs, the socket its
  askpass programs reach this process by and the script ssh runs as ``SSH_ASKPASS`` (see
  :mod:`.openssh_ask`);
- ``KEY.log`` (and ``KEY.log.1``, its older tail): what the master and its jump helpers
  say.  ssh writes it itself, so no process's reading can ever hold a master up; any
  tunnel using the master reads its last words to say which hop was lost.

All of them go once the master ended and no tunnel uses it, and the folder with the last.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from .. import procinfo
from ..errors import ConfigError, HopTimeout, HopUnreachable
from ..sshconfig import SYSTEM_CONFIG, ResolvedHop

# the config path goes into a shell command that ssh builds for ProxyJump, and the control
# socket path must fit in a sockaddr_un with ssh's 17-character temporary suffix
_SAFE_PATH = re.compile(r"[A-Za-z0-9_./+@-]+")
_MAX_DIR = 69  # 69 + 1 + 16 + 17 = 103: macOS's limit
#: a master's log is cut back to its last ``LOG_KEEP`` bytes once it is past ``LOG_LIMIT``
LOG_LIMIT = 1 << 20
LOG_KEEP = 16384


def secure_dir(path: Path) -> Path:
    """``path`` as a 0700 folder of this user (made if missing); ConfigError if it is not
    one of ours."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not path.is_dir() or path.is_symlink() or info.st_uid != os.getuid():
        raise ConfigError(f"{path} must be a folder of yours (not a link): remove it")
    if info.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def control_dir(*, create: bool = True) -> Path:
    """The 0700 folder of the control sockets: ``<runtime dir>/jupyter_tunnel-ssh``, or a
    folder in /tmp when that path is too long for a socket or has characters a shell
    would read.  Made if missing, unless ``create`` is False."""
    from jupyter_core.paths import jupyter_runtime_dir

    runtime = Path(jupyter_runtime_dir()).absolute()
    preferred = runtime / "jupyter_tunnel-ssh"
    if _SAFE_PATH.fullmatch(str(preferred)) and len(str(preferred)) <= _MAX_DIR:
        folder = preferred
    else:
        tmp = tempfile.gettempdir()
        if not _SAFE_PATH.fullmatch(tmp) or len(tmp) > 40:
            tmp = "/tmp"  # noqa: S108 - a 0700 folder of ours, checked by secure_dir
        digest = hashlib.sha256(str(runtime).encode()).hexdigest()[:10]
        folder = Path(tmp) / f"jupyter_tunnel-{os.getuid()}-{digest}"
    if not create:
        return folder
    folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return secure_dir(folder)


def chain_key(chain: list[ResolvedHop]) -> str:
    """Names the master of a chain: the same hops, users and config, the same master."""
    data = [chain[-1].config_file or "", [[h.alias, h.hostname, h.port, h.user] for h in chain]]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (0600) atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


class MasterFiles:
    """The files of one chain's master."""

    def __init__(self, folder: Path, key: str) -> None:
        self.folder = folder
        self.socket = folder / key
        self.lock = folder / f"{key}.lock"
        self.users = folder / f"{key}.users"
        self.config = folder / f"{key}.conf"
        self.log = folder / f"{key}.log"
        self.old_log = folder / f"{key}.log.1"
        self.ask_socket = folder / f"{key}.ask"
        self.askpass = folder / f"{key}.askpass"

    @classmethod
    def of_users(cls, users: Path) -> MasterFiles:
        """The files of the master whose users folder is ``users``."""
        return cls(users.parent, users.name.removesuffix(".users"))

    @contextlib.contextmanager
    def locked(self, timeout: float = 120.0, cancelled: Callable[[], bool] = lambda: False
               ) -> Iterator[None]:
        """Hold this master's lock (between processes and threads).  Raise
        :class:`HopTimeout` if another holds it ``timeout`` seconds (a login under way
        through slow hops takes a while), :class:`HopUnreachable` once ``cancelled()``.

        The holder that removes the master's files removes the lock file too: a waiter
        that then gets the lock of a removed file tries again with a new one."""
        deadline = time.monotonic() + timeout
        while True:
            fd = self._open_lock()
            try:
                self._acquire(fd, deadline, timeout, cancelled)
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(self.lock, follow_symlinks=False).st_ino == os.fstat(fd).st_ino:
                        break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        try:
            yield
        finally:
            os.close(fd)

    def _open_lock(self) -> int:
        for _ in range(10):  # the folder may just have been removed with its last master
            try:
                return os.open(self.lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            except FileNotFoundError:
                try:
                    secure_dir(self.folder)
                except OSError as exc:
                    raise HopUnreachable(f"cannot use {self.folder}: {exc}") from None
            except OSError as exc:  # cannot be written
                raise HopUnreachable(f"cannot use {self.lock}: {exc}") from None
        raise HopUnreachable(f"cannot use {self.lock}: its folder keeps vanishing")

    def _acquire(self, fd: int, deadline: float, timeout: float,
                 cancelled: Callable[[], bool]) -> None:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if cancelled():
                    raise HopUnreachable("the tunnel was closed") from None
                if time.monotonic() > deadline:
                    raise HopTimeout(
                        f"another tunnel to the same hosts held their SSH connection's lock "
                        f"for {timeout:g} s (still logging in, or stopped?): try again, or "
                        f"close it") from None
                time.sleep(0.05)

    def write_config(self, chain: list[ResolvedHop], interval: int, count: int,
                     timeout: float, asking: bool = False) -> None:
        """The ssh config of the master and its jump helpers: host key checking, no
        multiplexing of its own, whether ssh may ask (``BatchMode``: ``no`` when
        ``asking``, through our askpass program) and one try per question
        (``NumberOfPasswordPrompts 1``, so a wrong answer never burns a server's or PAM's
        counters twice) first, then the user's config (its values win for the rest, as ssh
        takes the first value it reads), then our defaults (``ConnectTimeout``,
        ``ServerAlive*``).  ssh passes ``-F`` on to its ProxyJump helpers, so the jump
        hosts get the same settings (``-o`` on the master's command line would not reach
        them)."""
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
                  "  ClearAllForwardings yes", f"  BatchMode {'no' if asking else 'yes'}",
                  "  NumberOfPasswordPrompts 1"]
        config = chain[-1].config_file
        includes = [config] if config else [str(Path.home() / ".ssh" / "config"), SYSTEM_CONFIG]
        lines.append("Host *")
        for path in includes:
            if re.search(r'["*?\[\]\n]', path):
                raise ConfigError(f"the ssh config path {path!r} cannot be handed to ssh: "
                                  "rename it, or use backend 'sshtunnel'")
            lines.append(f'Include "{path}"')
        lines += ["Host *", f"  ConnectTimeout {math.ceil(timeout)}",
                  f"  ServerAliveInterval {interval}", f"  ServerAliveCountMax {count}", ""]
        _write_private(self.config, "\n".join(lines))

    def open_log(self) -> tuple[int, int]:
        """The log of a master about to start: a descriptor to hand to ssh as its stderr
        (appending, so cutting the file back from another process is safe), and the offset
        where its lines begin.  What earlier masters said stays before them, cut back like
        the rest: a tunnel of the master that just ended may still be reading its last
        words.  Call it holding the lock."""
        self.trim_log()
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
        return fd, os.fstat(fd).st_size

    def log_tail(self) -> list[str]:
        """What the master and its helpers said last (about ``LOG_KEEP`` bytes), without
        debug lines."""
        lines: list[str] = []
        for path in (self.old_log, self.log):
            with contextlib.suppress(OSError), open(path, "rb") as fh:
                start = max(0, os.fstat(fh.fileno()).st_size - LOG_KEEP)
                fh.seek(start)
                text = fh.read().decode(errors="replace").splitlines()
                lines += text[1:] if start else text  # the first may be cut
        return [ln.rstrip("\r") for ln in lines if ln.strip() and not ln.startswith("debug")]

    def trim_log(self, limit: int = LOG_LIMIT) -> bool:
        """Once the log is past ``limit`` bytes, keep its last ``LOG_KEEP`` in ``KEY.log.1``
        and empty it (ssh appends, so it writes on at the new end).  True if it was cut."""
        try:
            fd = os.open(self.log, os.O_RDWR | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            size = os.fstat(fd).st_size
            if size <= limit:
                return False
            try:  # one process at a time cuts it; the others need not wait
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            tail = os.pread(fd, LOG_KEEP, size - LOG_KEEP)
            tail = tail[tail.find(b"\n") + 1:]  # whole lines
            _write_private(self.old_log, tail.decode(errors="replace"))
            os.ftruncate(fd, 0)
            return True
        except OSError:
            return False
        finally:
            os.close(fd)

    def socket_alive(self) -> bool:
        """Whether a master listens on the control socket; a socket no master listens on any
        more (one that was killed) is removed: ssh would not start a master over it."""
        if not self.socket.exists():
            return False
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.settimeout(2)
            probe.connect(str(self.socket))
        except (ConnectionRefusedError, FileNotFoundError):
            with contextlib.suppress(FileNotFoundError):
                self.socket.unlink()
            return False
        except OSError:
            pass
        finally:
            probe.close()
        return True

    def forget(self) -> None:
        """Remove the files of a master that ended and that no tunnel uses, the lock file
        and, when no other master's files are left in it, the folder.  Call it holding the
        lock."""
        for path in (self.config, self.log, self.old_log, self.ask_socket, self.askpass,
                     *self.folder.glob(f"{self.socket.name}.link-*")):  # streamlocal forwards
            with contextlib.suppress(OSError):
                path.unlink()
        for entry in self.users.iterdir() if self.users.is_dir() else []:
            with contextlib.suppress(OSError):
                entry.unlink()
        with contextlib.suppress(OSError):
            self.users.rmdir()
        if not self.socket_alive():  # a master that still runs keeps its lock
            with contextlib.suppress(OSError):
                self.lock.unlink()
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # fails while other masters' files are in it

    # the tunnels that use the master --------------------------------------------
    def register(self, user: str, remote: list[str] | None = None) -> None:
        """Count a tunnel (``user``) as using the master, with the remote forwards it asked
        of it (``remote``: ``-R`` specs)."""
        secure_dir(self.users)
        _write_private(self.users / user, json.dumps(remote or []))

    def drop(self, user: str) -> None:
        """Stop counting ``user`` (no lock needed: it touches nothing of the others)."""
        with contextlib.suppress(FileNotFoundError):
            (self.users / user).unlink()

    def unregister(self, user: str) -> int:
        """Stop counting ``user``; return how many live others still use the master."""
        self.drop(user)
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
    pid; the files of dead ones are removed.  ``but_pid``: that process counts as dead.
    Call it holding the master's lock."""
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
