"""The ssh ControlMaster behind the OpenSSH backend: how it is started, shared, asked for
remote forwards and commands, and how it ends (its files: :mod:`.openssh_files`).

The master runs with ``ControlPersist``: it leaves our process tree once logged in, and
stays up while any tunnel holds a control connection to it.  If every such process dies
without ending it, it exits by itself ``PERSIST`` seconds later.  No tunnel's process owns
its liveness: it writes its log to a file (never to a pipe that a stopped process would
stop reading), and any tunnel using it reads that file for its last words.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import procinfo
from ..errors import AnswerRefused, AuthError, HopTimeout, HopUnreachable, TunnelError
from ..login.askserver import AskServer
from ..login.questions import Ask
from ..spec import check_host, check_user
from ..sshconfig import ResolvedHop
from . import openssh_ask
from .base import NoticeCallback, ProgressCallback
from .openssh_errors import LoginTrace
from .openssh_files import MasterFiles, live_users

SSH = "ssh"
#: seconds a master stays up after the last tunnel holding it vanished without ending it
PERSIST = 10
#: in the environment of the ssh processes a master start runs, to find them again
MARKER = "JUPYTER_TUNNEL_SSH"


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


def processes_with(marker: str) -> list[int]:
    """Pids of this user's processes started with ``MARKER=marker`` in their environment."""
    needle, found = f"\0{MARKER}={marker}\0".encode(), []
    for entry in os.scandir("/proc") if os.path.isdir("/proc") else []:
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if needle in b"\0" + Path(entry.path, "environ").read_bytes():
                    found.append(int(entry.name))
    return found


class LoginLog:
    """Follows, in a thread, the log file an ssh that logs in writes (its stderr, shared by
    its jump helpers), line by line, for progress and errors, until it went to the
    background or :meth:`finish` was called and everything written was read."""

    def __init__(self, path: str, start: int, trace: LoginTrace) -> None:
        self.trace = trace
        self.events: queue.Queue[tuple[str, int]] = queue.Queue()
        self.forked = threading.Event()
        self.done = threading.Event()
        self._finish = threading.Event()
        self._fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        os.lseek(self._fd, start, os.SEEK_SET)  # this login's lines, not earlier masters'
        threading.Thread(target=self._read, daemon=True,
                         name="jupyter_tunnel-ssh-login-log").start()

    def finish(self) -> None:
        """Read what is written so far, then stop (ssh and its helpers ended or forked)."""
        self._finish.set()

    def _read(self) -> None:
        pending = b""
        try:
            while not self.forked.is_set():
                finishing = self._finish.is_set()  # before the read: nothing written is lost
                data = os.read(self._fd, 65536)
                if not data:
                    if finishing:
                        break
                    time.sleep(0.02)
                    continue
                pending += data
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    self._line(raw.decode(errors="replace").rstrip("\r"))
                    if self.trace.forked:
                        self.forked.set()
                        break
        except OSError:
            pass
        finally:
            if pending and not self.forked.is_set():
                self.trace.feed(pending.decode(errors="replace").rstrip("\r"))
            os.close(self._fd)
            self.done.set()
            self.events.put(("eof", 0))

    def _line(self, line: str) -> None:
        hop = self.trace.feed(line)
        if hop is not None:
            self.events.put(("progress", hop))
        if "disabling multiplexing" in line:  # it would stay a plain ssh
            self.events.put(("exit", 255))


class Launch:
    """One run of ``ssh -M``: log in through the chain, then leave a master behind.

    With ``ask``, ssh and its jump helpers may ask questions (a one-time code, a password,
    a key's passphrase) through our askpass program (see :mod:`.openssh_ask`); the config
    must have been written with ``asking=True`` for the jump helpers to.
    """

    def __init__(self, files: MasterFiles, chain: list[ResolvedHop], ask: Ask | None = None
                 ) -> None:
        self.files, self.chain, self.ask = files, chain, ask
        self.marker = os.urandom(8).hex()
        self.argv = [SSH, "-F", str(files.config), "-v", "-N", "-M", "-S", str(files.socket),
                     "-o", f"ControlPersist={PERSIST}", "-o", "ExitOnForwardFailure=yes",
                     "-o", "ClearAllForwardings=yes",
                     "-o", f"BatchMode={'no' if ask is not None else 'yes'}",
                     *destination(chain)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: LoginLog | None = None
        self.asking: AskServer | None = None

    def _start_asking(self, trace: LoginTrace) -> dict[str, str]:
        """Serve the askpass programs of this login; their part of ssh's environment."""
        assert self.ask is not None
        files = self.files
        questions = openssh_ask.LoginQuestions(self.chain, trace.failing)
        openssh_ask.write_script(files.askpass)
        self.asking = AskServer(files.ask_socket, self.ask, questions.question,
                                on_error=lambda _exc: self.kill())
        return openssh_ask.env(files.askpass, files.ask_socket)

    def _stop_asking(self) -> None:
        asking, self.asking = self.asking, None
        if asking is not None:
            asking.close()
        if self.ask is not None:
            with contextlib.suppress(FileNotFoundError):
                self.files.askpass.unlink()

    def _failure(self, error: TunnelError, asking: AskServer | None) -> TunnelError:
        """The error of a failed login, knowing what was asked: the ask's own error (no
        answer, no one to ask), or a refused answer."""
        if asking is None:
            return error
        if asking.error is not None:
            return asking.error
        if isinstance(error, AuthError) and asking.answered:
            hop = next((h for h in self.chain if h.alias == error.hop), None)
            asked = [q for q in asking.answered if hop is None or q.hop == hop.alias]
            if asked:
                q = asked[-1]
                if q.kind == "passphrase":
                    return AnswerRefused(
                        f"{q.label} refused to log in after the passphrase was given "
                        f"({q.text.strip()}): the passphrase was wrong, or {q.label} does "
                        "not accept that key", hop=q.hop)
                return AnswerRefused(f"{q.label} refused the answer given to "
                                     f"'{q.text.strip()}' (a wrong {_what(q.kind)}?): "
                                     "try again with a new one", hop=q.hop)
        return error

    def run(self, progress: ProgressCallback | None, timeout: float,
            notice: NoticeCallback | None) -> None:
        """Start ssh and wait until the master is up; raise a typed error naming the hop."""
        chain = self.chain
        if progress:
            progress(0, chain[0])
        stderr, start = self.files.open_log()
        try:
            self.log = log = LoginLog(str(self.files.log), start, LoginTrace(chain))
            try:
                env = ssh_env(self.marker)
                if self.ask is not None:
                    env.update(self._start_asking(log.trace))
                self.proc = proc = subprocess.Popen(
                    self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=stderr, env=env, start_new_session=True)
            except BaseException:
                log.finish()
                self._stop_asking()
                raise
        finally:
            os.close(stderr)
        try:
            self._run(proc, log, progress, timeout, notice)
        finally:
            self._stop_asking()

    def _run(self, proc: subprocess.Popen[bytes], log: LoginLog,
             progress: ProgressCallback | None, timeout: float,
             notice: NoticeCallback | None) -> None:
        chain, asking = self.chain, self.asking
        threading.Thread(target=lambda: log.events.put(("exit", proc.wait())), daemon=True,
                         name="jupyter_tunnel-ssh-wait").start()
        per_hop = [2 * (h.connect_timeout or timeout) + 5 for h in chain]
        deadline = time.monotonic() + sum(per_hop)
        try:
            status = self._wait(log, deadline, progress)
        except BaseException as exc:
            self.kill()
            log.finish()
            if asking is not None and asking.error is not None and \
                    isinstance(exc, TunnelError):
                raise asking.error from None
            raise
        if status == 0:
            log.forked.wait(2)  # what it said before it went to the background
            log.finish()
            if notice:
                for message in log.trace.notices:
                    notice(message)
            return
        self.kill()  # its jump helpers too: nothing more is written
        log.finish()
        log.done.wait(2)
        raise self._failure(log.trace.error(status, timeout), asking)

    def _wait(self, log: LoginLog, deadline: float, progress: ProgressCallback | None
              ) -> int:
        asking = self.asking
        while True:
            # the time a person takes to answer does not count (the ask has its own limit)
            waited = asking.waited() if asking is not None else 0.0
            left = deadline + waited - time.monotonic()
            if asking is not None and asking.busy():
                left = max(left, 0.5)
            if left <= 0:
                hop = log.trace.failing()
                raise HopTimeout(f"ssh did not finish logging in to {hop.label} in time",
                                 hop=hop.alias)
            try:
                kind, value = log.events.get(timeout=min(left, 0.5) if asking else left)
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


def _what(kind: str) -> str:
    return {"password": "password", "passphrase": "passphrase"}.get(kind, "code or answer")


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


def last_words(files: MasterFiles, processes: list[dict[str, Any]], wait: float = 1.5
               ) -> list[str]:
    """What the master and its helpers said last, once ``processes`` (their ``{pid,
    started}``) are gone, or ``wait`` seconds passed."""
    deadline = time.monotonic() + wait
    for item in processes:
        pid, started = int(item["pid"]), item.get("started")
        while procinfo.is_alive(pid, None if started is None else int(started)) and \
                time.monotonic() < deadline:
            time.sleep(0.02)
    return files.log_tail()


def end_unless_used(users: Path, owner: int | None, end_processes: Callable[[], None],
                    timeout: float = 10.0) -> list[int]:
    """For cleanup: under the master's lock (as every tunnel attaching to it holds), the
    pids of the live tunnels other than ``owner``'s that use the master whose users folder
    is ``users``; if there are none, ``end_processes()`` and remove the master's files."""
    files = MasterFiles.of_users(users)
    with files.locked(timeout=timeout):
        others = sorted(set(live_users(users, but_pid=owner).values()))
        if not others:
            end_processes()
            files.forget()
        return others


def sweep(folder: Path) -> list[str]:
    """Remove the files of the masters in ``folder`` that ended with no tunnel left to
    remove them (their tunnels were killed); skip those whose lock is busy.  Returns the
    keys removed."""
    keys = {entry.name.split(".")[0] for entry in folder.iterdir()} if folder.is_dir() else set()
    removed = []
    for key in sorted(keys):
        files = MasterFiles(folder, key)
        with contextlib.suppress(TunnelError), files.locked(timeout=0.5):
            if not files.socket_alive() and not live_users(files.users):
                files.forget()
                removed.append(key)
    return removed


def unreachable(hop: ResolvedHop, what: str) -> HopUnreachable:
    """The error for a master that is gone."""
    return HopUnreachable(f"the SSH connection to {hop.label} is down ({what})", hop=hop.alias)
