"""The remote side of remote kernels: what runs on the target next to each kernel.

Embedded in one program after ``resume/frames`` and ``resume/helper_start`` (see
``kernels/remote.py``) and sent over SSH on stdin like the resume helper; stdlib only and
Python 3.8 syntax at runtime, except that listing and starting kernels imports the
target's ``jupyter_client`` (it runs with the Python of the target's Jupyter server).

One JSON request line follows the program; one JSON answer line comes back:

- ``{"action": "specs"}``: the kernelspecs there, ``{"specs": {name: {display_name,
  language, interrupt_mode}}}``.
- ``{"action": "start", "id", "kernel", "key", "signature_scheme", "cwd", "orphan_after"}``:
  start that kernel on five free loopback ports, under a nanny of its own in a new
  session (it outlives the SSH session).  Answer: the ports, the kernel's and the nanny's
  pid and start time.
- ``{"action": "status"|"signal"|"stop", "id", ...}``: about the kernel of that id, always
  proven by the pid and start time the nanny wrote in its state file: ``status`` (and it
  tells the nanny its owner is still there), ``signal`` (``signum``), ``stop`` (end it and
  its process group, remove its files).
- ``{"action": "list"}``: every kernel of ours there, alive or not.

Files, in the 0700 folder ``helper_start.folder(env, "kernels")``: ``ID.json`` (the
connection file, 0600: it holds the key), ``ID.state`` (identities, the exit status),
``ID.beat`` (touched by each status: the owner is there), ``ID.log`` (the kernel's
output).  A nanny whose owner has not been heard of for ``orphan_after`` seconds ends its
kernel by itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sys
import time
from typing import Any

from ..resume.helper_start import StartError, folder, proc_start

_KERNEL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_KERNEL_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}\Z")
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
#: a SIGTERM'd kernel gets this long before SIGKILL
STOP_GRACE = 5.0


def _paths(kid: Any) -> dict[str, str]:
    if not isinstance(kid, str) or not _KERNEL_ID.match(kid):
        raise StartError("id must be 1-64 letters, digits, '-' or '_'")
    base = folder(os.environ, "kernels")
    return {ext: os.path.join(base, f"{kid}.{ext}") for ext in ("json", "state", "beat", "log")}


def _write_private(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _same(pid: Any, started: Any) -> bool:
    return isinstance(pid, int) and pid > 0 and started is not None \
        and proc_start(pid) == started


def specs() -> dict[str, Any]:
    """The kernelspecs of this host's Jupyter."""
    from jupyter_client.kernelspec import KernelSpecManager

    found = {}
    for name, info in sorted(KernelSpecManager().get_all_specs().items()):
        spec = info.get("spec") or {}
        found[name] = {"display_name": str(spec.get("display_name") or name),
                       "language": str(spec.get("language") or ""),
                       "interrupt_mode": str(spec.get("interrupt_mode") or "signal")}
    return {"specs": found}


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def start(req: dict[str, Any]) -> dict[str, Any]:
    """Start a kernel under a nanny; answer its ports and identities."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    paths = _paths(req.get("id"))
    name, key, scheme = req.get("kernel"), req.get("key"), req.get("signature_scheme")
    if not isinstance(name, str) or not _KERNEL_NAME.match(name):
        raise StartError("kernel must be a kernelspec name")
    if not isinstance(key, str) or not 0 < len(key) <= 256 or scheme != "hmac-sha256":
        raise StartError("key and signature_scheme (hmac-sha256) are needed")
    orphan_after = req.get("orphan_after")
    if isinstance(orphan_after, bool) or not isinstance(orphan_after, (int, float)) \
            or not 1 <= orphan_after <= 366 * 86400:
        raise StartError("orphan_after must be 1 to 31622400 seconds")
    cwd = req.get("cwd") or os.path.expanduser("~")
    if not isinstance(cwd, str) or "\0" in cwd:
        raise StartError("cwd must be a path")
    cwd = os.path.expanduser(cwd)
    if not os.path.isdir(cwd):
        raise StartError(f"no such folder: {cwd}")
    try:
        spec = KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        raise StartError(f"no kernel named {name!r} here (see: jupyter tunnel kernels "
                         "list)") from None
    old = _read(paths["state"]) or {}
    if _same(old.get("pid"), old.get("started")):
        raise StartError(f"a kernel of id {req['id']} runs already")
    ports = {name: port for name, port in zip(PORT_NAMES, _free_ports(5))}  # noqa: B905
    info = dict(ports, ip="127.0.0.1", transport="tcp", key=key, signature_scheme=scheme,
                kernel_name=name)
    _write_private(paths["json"], json.dumps(info))
    argv = [arg.replace("{connection_file}", paths["json"])
               .replace("{resource_dir}", spec.resource_dir) for arg in spec.argv]
    major, minor = sys.version_info[:2]
    pythons = {"python", f"python{major}", f"python{major}.{minor}"}
    if argv and argv[0] in pythons:  # as jupyter_client does: this Python, not the PATH's
        argv[0] = sys.executable
    env = dict(os.environ)
    env.update({str(k): str(v) for k, v in (spec.env or {}).items()})
    _write_private(paths["beat"], "")
    answer = _spawn(argv, env, cwd, paths, float(orphan_after))
    if "error" in answer:
        return answer
    answer.update(ports=ports, connection_file=paths["json"],
                  interrupt_mode=spec.interrupt_mode or "signal")
    return answer


def _spawn(argv: list[str], env: dict[str, str], cwd: str, paths: dict[str, str],
           orphan_after: float) -> dict[str, Any]:
    r, w = os.pipe()
    child = os.fork()
    if child:
        os.close(w)
        os.waitpid(child, 0)
        with os.fdopen(r, "rb") as pipe:
            line = pipe.read(64 * 1024)
        try:
            answer = json.loads(line)
        except ValueError:
            answer = {"error": "the kernel's nanny died while starting"}
        return answer if isinstance(answer, dict) else {"error": "bad answer from the nanny"}
    try:  # the nanny: a new session, detached from the SSH session's terminal and pipes
        os.close(r)
        os.setsid()
        if os.fork():
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        log = os.open(paths["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            kernel = _launch(argv, env, cwd, log)
        except OSError as exc:
            os.write(w, json.dumps({"error": f"the kernel did not start: {exc}"}).encode())
            os._exit(1)
        os.close(log)
        state = {"pid": kernel, "started": proc_start(kernel), "cmdline": argv,
                 "nanny": os.getpid(), "nanny_started": proc_start(os.getpid()),
                 "exit": None}
        _write_private(paths["state"], json.dumps(state))
        os.write(w, json.dumps({k: state[k] for k in ("pid", "started", "nanny",
                                                         "nanny_started")}).encode())
        os.close(w)
        _watch(kernel, paths, state, orphan_after)
    except BaseException:
        os._exit(1)
    os._exit(0)


def _launch(argv: list[str], env: dict[str, str], cwd: str, log: int) -> int:
    """Start the kernel in a process group of its own (its signals reach it alone)."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            os.chdir(cwd)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.execvpe(argv[0], argv, env)  # noqa: S606 (the kernelspec's argv, no shell)
        except OSError as exc:
            os.write(2, f"jupyter_tunnel: cannot run {argv[0]}: {exc}\n".encode())
        finally:
            os._exit(127)
    return pid


def _watch(kernel: int, paths: dict[str, str], state: dict[str, Any],
           orphan_after: float) -> None:
    """Wait for the kernel; end it if its owner stays away for ``orphan_after``."""
    while True:
        done, status = os.waitpid(kernel, os.WNOHANG)
        if done:
            state["exit"] = -os.WTERMSIG(status) if os.WIFSIGNALED(status) \
                else os.WEXITSTATUS(status)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(paths["json"])  # the key: no use once the kernel is gone
            if os.path.exists(paths["state"]):
                _write_private(paths["state"], json.dumps(state))
            _end_group(kernel)  # what it started and left behind
            return
        try:
            beat = os.stat(paths["beat"]).st_mtime
        except OSError:
            beat = 0.0  # the files were removed: stop was asked for
        if time.time() - beat > orphan_after:
            _end_group(kernel)
        time.sleep(0.25)


def _end_group(pgid: int) -> None:
    """End the kernel's process group: SIGTERM, then SIGKILL for what is left of it."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, signum)
        except OSError:
            return  # no process left in the group
        deadline = time.monotonic() + STOP_GRACE
        while time.monotonic() < deadline:
            if not _group_alive(pgid):
                return
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` runs (a zombie leader does not count)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def _state(paths: dict[str, str]) -> dict[str, Any]:
    state = _read(paths["state"])
    if state is None:
        raise StartError("no such kernel here (it ended and was removed)")
    return state


def status(req: dict[str, Any]) -> dict[str, Any]:
    """Whether the kernel runs (and tell its nanny that its owner is there)."""
    paths = _paths(req.get("id"))
    state = _state(paths)
    alive = _same(state.get("pid"), state.get("started")) and not _zombie(state["pid"])
    if alive:
        os.utime(paths["beat"]) if os.path.exists(paths["beat"]) \
            else _write_private(paths["beat"], "")
    return {"alive": alive, "exit": state.get("exit"), "pid": state.get("pid")}


def send_signal(req: dict[str, Any]) -> dict[str, Any]:
    """Signal the kernel (an interrupt); only the very process the nanny started."""
    paths = _paths(req.get("id"))
    state = _state(paths)
    signum = req.get("signum")
    if not isinstance(signum, int) or isinstance(signum, bool) or not 0 <= signum < 65:
        raise StartError("signum must be a signal number")
    if not _same(state.get("pid"), state.get("started")) or _zombie(state["pid"]):
        return {"alive": False}
    if signum:  # to its process group, as jupyter_client signals a local kernel
        os.killpg(state["pid"], signum)
    return {"alive": True}


def stop(req: dict[str, Any]) -> dict[str, Any]:
    """End the kernel (its process group: what it started too) and remove its files.

    With ``pid`` and ``started`` in the request (cleanup, from a record made elsewhere),
    only if the nanny's own state file names that very process.
    """
    paths = _paths(req.get("id"))
    state = _read(paths["state"])
    if state is None:
        for path in paths.values():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return {"result": "gone", "detail": "no kernel of that id runs here"}
    pid = state.get("pid")
    if "pid" in req and (req.get("pid") != pid or req.get("started") != state.get("started")):
        return {"result": "unproven", "detail": f"its state file names pid {pid}, started "
                f"{state.get('started')}, not pid {req.get('pid')}"}
    result = "gone"
    if isinstance(pid, int) and _same(pid, state.get("started")) and not _zombie(pid):
        _end_group(pid)
        result = "ended"
    deadline = time.monotonic() + 2.0
    while isinstance(pid, int) and _same(pid, state.get("started")) \
            and time.monotonic() < deadline:
        time.sleep(0.05)  # until its nanny has reaped it: then no trace of it is left
    for path in paths.values():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return {"result": result, "detail": ""}


def running() -> dict[str, Any]:
    """Every kernel of ours here: id, pid, alive, when its owner was last heard of."""
    base = folder(os.environ, "kernels")
    found = []
    for entry in sorted(os.listdir(base)):
        if not entry.endswith(".state"):
            continue
        kid = entry[: -len(".state")]
        state = _read(os.path.join(base, entry)) or {}
        try:
            beat = os.stat(os.path.join(base, f"{kid}.beat")).st_mtime
        except OSError:
            beat = None
        pid = state.get("pid")
        alive = isinstance(pid, int) and _same(pid, state.get("started")) and not _zombie(pid)
        found.append({"id": kid, "pid": pid, "alive": alive, "exit": state.get("exit"),
                      "heard": beat})
    return {"kernels": found}


def main_kernels() -> None:
    """The program's entry: one request line on stdin, one JSON answer line out."""
    try:
        req = json.loads(sys.stdin.buffer.readline(64 * 1024))
        if not isinstance(req, dict):
            raise StartError("the request must be a JSON object")
        action = req.get("action")
        if action == "specs":
            answer = specs()
        elif action == "start":
            answer = start(req)
        elif action == "status":
            answer = status(req)
        elif action == "signal":
            answer = send_signal(req)
        elif action == "stop":
            answer = stop(req)
        elif action == "list":
            answer = running()
        else:
            raise StartError(f"unknown action {action!r}")
    except ImportError:
        answer = {"error": "jupyter_client is not installed for this Python"}
    except (StartError, OSError, ValueError) as exc:
        answer = {"error": str(exc)}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    sys.exit(1 if "error" in answer else 0)
