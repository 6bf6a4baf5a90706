"""Start of the remote helper: settings, its private folder, the state file, daemonizing.

Embedded in the helper program (see ``remote.py``), after ``frames`` and ``replay`` and
before ``helper_loop`` and ``helper_main``; stdlib only, Python 3.8 syntax at runtime.

The program reads one JSON line of settings from stdin (``id``, ``secret``,
``stream_limit``, ``tunnel_limit``, ``outage``, optional ``keepalive``), then prints one
JSON line on stdout: ``{"socket", "pid", "started", "version", "existing"}`` or
``{"error"}``, and exits; the helper itself runs on, detached.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import stat
import sys
from typing import Any

from .frames import MAX_SECRET, VERSION

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
#: sun_path holds 108 bytes, the terminating NUL included
MAX_SOCKET_PATH = 107


class StartError(Exception):
    """The helper cannot start; the message is shown to the user."""


class Settings:
    """The helper's settings, checked."""

    def __init__(self, raw: object) -> None:
        if not isinstance(raw, dict):
            raise StartError("settings must be a JSON object")
        tunnel_id = raw.get("id")
        if not isinstance(tunnel_id, str) or not _ID.match(tunnel_id):
            raise StartError("settings: id must be 1-64 letters, digits, '-' or '_'")
        secret = raw.get("secret")
        if not isinstance(secret, str) or not 0 < len(secret.encode()) <= MAX_SECRET:
            raise StartError(f"settings: secret must be a string of 1-{MAX_SECRET} bytes")
        self.tunnel_id = tunnel_id
        self.secret = secret.encode()
        self.stream_limit = _number(raw, "stream_limit", 1, 2**40, int)
        self.tunnel_limit = _number(raw, "tunnel_limit", 1, 2**44, int)
        self.outage = float(_number(raw, "outage", 0, 7 * 86400, float))
        self.keepalive = float(_number(raw, "keepalive", 0, 86400, float, 0))


def _number(raw: dict[str, Any], key: str, low: float, high: float, kind: type,
            default: float | None = None) -> Any:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or (kind is int and not isinstance(value, int)) or not low <= value <= high:
        raise StartError(f"settings: {key} must be a number from {low} to {high}")
    return value


def read_settings(stream: Any) -> Settings:
    """The settings line that follows the program on stdin."""
    line = stream.readline(64 * 1024)
    try:
        raw = json.loads(line)
    except ValueError:
        raise StartError("settings: not one line of JSON") from None
    return Settings(raw)


def _check_dir(path: str, uid: int, own: bool) -> None:
    """Refuse a folder an attacker could change, as an SSH client refuses a key's folder."""
    st = os.lstat(path) if own else os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise StartError(f"{path} is not a folder")
    if st.st_uid != uid and (own or st.st_uid != 0):
        raise StartError(f"{path} is not owned by this user")
    if st.st_mode & 0o022 and not (not own and st.st_mode & stat.S_ISVTX):
        raise StartError(f"{path} is writable by group or others")


def folder(env: Any, kind: str = "resume") -> str:
    """The 0700 folder of the helper's socket and state files (``kind`` "kernels": the
    remote kernels' files), created if missing.

    ``$XDG_RUNTIME_DIR/jupyter_tunnel/KIND`` when that runtime dir is usable (ours,
    0700), else ``~/.cache/jupyter_tunnel/KIND``.
    """
    uid = os.geteuid()
    base = env.get("XDG_RUNTIME_DIR") or ""
    try:
        st = os.stat(base) if base.startswith("/") else None
    except OSError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == uid \
            and not st.st_mode & 0o077:
        parts = ["jupyter_tunnel", kind]
    else:
        base = os.path.expanduser("~")
        if not base.startswith("/"):
            raise StartError("no home folder for the helper's files")
        parts = [".cache", "jupyter_tunnel", kind]
    _check_dir(base, uid, own=False)
    path = base
    for part in parts:
        path = os.path.join(path, part)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        _check_dir(path, uid, own=True)
    if os.lstat(path).st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def proc_start(pid: int) -> int | None:
    """Start time of a process in clock ticks (field 22 of /proc/PID/stat), None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
        fields = text[text.rfind(")") + 2:].split()
        if fields[0] in ("Z", "X"):
            return None
        return int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def proc_cmdline(pid: int) -> list[str] | None:
    """A process's argv, None if unknown."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [p.decode("utf-8", "replace") for p in raw.split(b"\0") if p]


def _alive(state: dict[str, Any]) -> bool:
    pid = state.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if not os.path.exists("/proc/self/stat"):  # no procfs: a signal probe is all there is
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True
    return proc_start(pid) == state.get("started") and proc_cmdline(pid) == state.get("cmdline")


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def write_state(path: str, sock_path: str) -> dict[str, Any]:
    """Write this process's identity to the state file (0600, atomically); return it."""
    pid = os.getpid()
    state = {"pid": pid, "started": proc_start(pid), "cmdline": proc_cmdline(pid),
             "socket": sock_path, "version": VERSION}
    tmp = path + ".tmp"
    _remove(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    os.rename(tmp, path)
    return state


def reply(state: dict[str, Any], existing: bool) -> dict[str, Any]:
    """The line the laptop reads: where to connect, and the helper's identity."""
    return {"socket": state["socket"], "pid": state["pid"], "started": state.get("started"),
            "version": state.get("version"), "existing": existing}


def start(settings: Settings, serve: Any) -> dict[str, Any]:
    """Report the live helper of this id, or start one running ``serve(settings, listener,
    sock_path, state_path)`` detached; return the reply (in the calling process only)."""
    path = folder(os.environ)
    sock_path = os.path.join(path, settings.tunnel_id + ".sock")
    state_path = os.path.join(path, settings.tunnel_id + ".json")
    if len(sock_path.encode()) > MAX_SOCKET_PATH:
        raise StartError(f"socket path too long for a Unix socket: {sock_path}")
    lock = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # two starts of one id at once: the second waits, then finds the first
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = _read_json(state_path)
        if state is not None and _alive(state):
            return reply(state, True)
        _remove(sock_path)
        _remove(state_path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(sock_path)
        finally:
            os.umask(old)
        os.chmod(sock_path, 0o600)
        listener.listen(128)
        return _daemonize(settings, serve, listener, sock_path, state_path, lock)
    finally:
        os.close(lock)


def _daemonize(settings: Settings, serve: Any, listener: socket.socket, sock_path: str,
               state_path: str, lock: int) -> dict[str, Any]:
    r, w = os.pipe()
    child = os.fork()
    if child:
        os.close(w)
        listener.close()
        os.waitpid(child, 0)
        with os.fdopen(r, "rb") as pipe:
            line = pipe.read(64 * 1024)
        try:
            answer = json.loads(line)
        except ValueError:
            answer = {"error": "the helper died while starting"}
        return answer if isinstance(answer, dict) else {"error": "bad answer from the helper"}
    # first child: a new session, then a grandchild that no terminal can ever own
    try:
        os.close(r)
        os.close(lock)
        os.setsid()
        if os.fork():
            os._exit(0)
        os.chdir("/")
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        try:
            state = write_state(state_path, sock_path)
            answer = reply(state, False)
        except Exception as exc:
            answer = {"error": f"cannot write the state file: {exc}"}
        os.write(w, json.dumps(answer).encode())
        os.close(w)
        if "error" in answer:
            _remove(sock_path)
        else:
            serve(settings, listener, sock_path, state_path)
    except BaseException:
        _remove(sock_path)
        os._exit(1)
    os._exit(0)


def main_start(serve: Any) -> None:
    """The program's entry: settings from stdin, one JSON line out, exit status 0 or 1."""
    try:
        answer = start(read_settings(sys.stdin.buffer), serve)
    except (StartError, OSError) as exc:
        answer = {"error": str(exc)}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    sys.exit(1 if "error" in answer else 0)
