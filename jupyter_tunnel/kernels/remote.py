"""Asking the target about its kernels: the nanny program and its one-line requests.

Like the resume helper (``resume/remote.py``): the command line is fixed text (the
Python's path, checked, and the loader), the program and the request travel on stdin,
so a kernel name, a folder or the key never reach a command line.  The Python is the
one that runs the target's Jupyter server (it has ``jupyter_client`` and the
kernelspecs the user sees there), found by ``resume.launch.find_python``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cache
from typing import Any

from ..errors import RemoteKernelError, TunnelError
from ..resume import launch, remote

__all__ = ["RemoteKernels", "program"]

_PATH = re.compile(r"/[A-Za-z0-9_./+-]*\Z")
_MODULES = ("resume/frames.py", "resume/helper_start.py", "kernels/nanny.py")

# The Python that runs process $1 (the target's Jupyter, if ours) as it was invoked (a
# venv's python is a link: only the path it was started by finds the venv), else as
# resolved, else python3 on the PATH: the first of them that imports jupyter_client (with
# $2 "any": the first Python 3.8+, enough to stop a kernel).  Prints its path; exit 3: none.
FIND_PYTHON_SCRIPT = r"""
a= e=
if [ -n "$1" ] && [ -O "/proc/$1" ]; then
  a=$(tr '\0' '\n' < "/proc/$1/cmdline" 2>/dev/null | head -n 1)
  case "$a" in /*) ;; */*) a="$(readlink "/proc/$1/cwd" 2>/dev/null)/$a";; esac
  e=$(readlink "/proc/$1/exe" 2>/dev/null)
fi
m=jupyter_client
[ "$2" = any ] && m=os
for p in "$a" "$e" "$(command -v python3 2>/dev/null)"; do
  case "$p" in /*python*) ;; *) continue;; esac
  [ -x "$p" ] && "$p" -c "import sys, $m; sys.exit(sys.version_info < (3, 8))" \
    2>/dev/null && { printf '%s\n' "$p"; exit 0; }
done
exit 3
"""

#: runs a command on the target: (command, timeout, stdin) -> (status, stdout, stderr)
RunCommand = Callable[[str, float, "str | None"], tuple[int, str, str]]


@cache
def program() -> str:
    """The nanny program's full source (Python 3.8+)."""
    return remote.join_modules(_MODULES, "main_kernels()")


class RemoteKernels:
    """The kernels of one target, asked through ``run`` with the Python of ``jupyter_pid``
    (the target's Jupyter server; None: python3 on the PATH)."""

    def __init__(self, run: RunCommand, host: str, jupyter_pid: int | None, *,
                 any_python: bool = False) -> None:
        self.host = host
        self._run = run
        self._pid = jupyter_pid
        self._any = any_python  # status, signal, stop and list only: no jupyter_client needed
        self._python = ""

    @property
    def python(self) -> str:
        """The target's Python that runs the nanny (found on first use)."""
        if not self._python:
            pid = str(int(self._pid)) if self._pid else "''"
            command = f"{launch.REMOTE_SHELL} {pid}{' any' if self._any else ''}"
            try:
                status, out, _ = self._run(command, 30.0, FIND_PYTHON_SCRIPT)
            except TunnelError as exc:
                raise RemoteKernelError(f"{self.host}: {exc.message}") from None
            path = out.strip().splitlines()[-1] if out.strip() else ""
            if status != 0 or not _PATH.match(path):
                if self._any:
                    raise RemoteKernelError(f"no Python 3.8+ on {self.host}")
                if path and not _PATH.match(path):
                    raise RemoteKernelError(f"the Python on {self.host} has a path this "
                                            f"cannot use safely: {path!r}")
                raise RemoteKernelError(
                    f"no Python with jupyter_client on {self.host}: remote kernels need the "
                    "Python of a Jupyter server there (or python3 with jupyter_client on the "
                    "PATH)")
            self._python = path
        return self._python

    def ask(self, request: dict[str, Any], timeout: float = 60.0) -> dict[str, Any]:
        """Send one request; its answer, or RemoteKernelError with the target's words."""
        stdin = remote.stdin_for(program(), "jupyter-tunnel-kernels", json.dumps(request))
        try:
            # not isolated (-I), unlike the resume helper: jupyter_client may come from the
            # user's site-packages or PYTHONPATH there, as the finder saw it
            status, out, err = self._run(remote.command(self.python, isolated=False), timeout,
                                         stdin.decode("utf-8"))
        except TunnelError as exc:
            raise RemoteKernelError(f"{self.host}: {exc.message}") from None
        lines = [line for line in out.splitlines() if line.strip()]
        try:
            answer = json.loads(lines[-1]) if lines else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            last = next((ln.strip() for ln in reversed(err.splitlines()) if ln.strip()), "")
            raise RemoteKernelError(f"no answer about kernels from {self.host} (exit "
                                    f"{status}{': ' + last if last else ''})")
        if "error" in answer:
            raise RemoteKernelError(f"{self.host}: {answer['error']}")
        return answer

    def specs(self) -> dict[str, dict[str, str]]:
        """The target's kernelspecs: name -> display_name, language, interrupt_mode."""
        found = self.ask({"action": "specs"}).get("specs")
        if not isinstance(found, dict):
            raise RemoteKernelError(f"{self.host} listed no kernelspecs")
        return found

    def start(self, kernel_id: str, kernel: str, key: str, cwd: str,
              orphan_after: float) -> dict[str, Any]:
        """Start kernel ``kernel`` there; its ports, pid and start time."""
        answer = self.ask({"action": "start", "id": kernel_id, "kernel": kernel, "key": key,
                           "signature_scheme": "hmac-sha256", "cwd": cwd,
                           "orphan_after": orphan_after}, timeout=120.0)
        ports = answer.get("ports")
        if not isinstance(ports, dict) or not isinstance(answer.get("pid"), int):
            raise RemoteKernelError(f"{self.host} gave no ports for the kernel")
        return answer

    def status(self, kernel_id: str) -> dict[str, Any]:
        """Whether it runs (and its exit status if not); tells its nanny we are here."""
        return self.ask({"action": "status", "id": kernel_id}, timeout=30.0)

    def signal(self, kernel_id: str, signum: int) -> bool:
        """Signal it; False when it no longer runs."""
        return bool(self.ask({"action": "signal", "id": kernel_id, "signum": signum},
                             timeout=30.0).get("alive"))

    def stop(self, kernel_id: str, *, pid: int | None = None, started: int | None = None
             ) -> dict[str, Any]:
        """End it and remove its files there: ``{"result": "ended"|"gone"|"unproven",
        "detail"}``; with ``pid`` and ``started`` only if its nanny's record names that very
        process (what cleanup knows of it)."""
        request: dict[str, Any] = {"action": "stop", "id": kernel_id}
        if pid is not None:
            request.update(pid=pid, started=started)
        return self.ask(request, timeout=30.0)

    def running(self) -> list[dict[str, Any]]:
        """Every kernel of ours there."""
        found = self.ask({"action": "list"}).get("kernels")
        return found if isinstance(found, list) else []
