"""The REST API's remote kernels, without HTTP: the ``POST kernels`` body, installing and
removing kernelspecs (part of :class:`~.rest_service.TunnelService`)."""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
from collections.abc import Sequence
from typing import Any

from .errors import SpecError
from .kernels import service as kernel_service
from .login.mailbox import Mailbox
from .manager import TunnelManager
from .spec import TunnelSpec, build_spec
from .sshconfig import ResolvedHop, SSHConfig, resolve_chain

__all__ = ["KernelsAPI", "KernelsRequest", "check_kernel_name", "parse_kernels_request"]

log = logging.getLogger("jupyter_tunnel")

#: the only fields of a request to install a target's kernels
KERNELS_FIELDS = ("target", "via", "kernels", "cwd")
#: bounds of a kernels request's fields (a client cannot make the server work on megabytes)
MAX_HOST_TEXT = 300
MAX_VIA = 16
MAX_KERNELS = 64
MAX_CWD = 4096
#: a kernelspec name as Jupyter allows it (letters, digits, '.', '-', '_'; not '.' first)
_KERNEL_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclasses.dataclass(frozen=True)
class KernelsRequest:
    """A checked ``POST kernels`` body: whose kernels to install here, and which."""

    spec: TunnelSpec
    kernels: list[str]
    cwd: str

    @property
    def target(self) -> str:
        return str(self.spec.target)

    @property
    def via(self) -> list[str]:
        return [str(hop) for hop in self.spec.via]


def _one_line(value: Any, key: str, limit: int, what: str) -> str:
    if not isinstance(value, str):
        raise SpecError(f"'{key}' must be {what}")
    if len(value) > limit:
        raise SpecError(f"'{key}' is too long (more than {limit} characters)")
    if _CONTROL.search(value):
        raise SpecError(f"'{key}' must be one line of text, without control characters")
    return value


def check_kernel_name(name: Any, key: str = "name") -> str:
    """A kernelspec name (``beast-python3``, ``python3``); :class:`SpecError` if it cannot be
    one."""
    if not isinstance(name, str) or not _KERNEL_NAME.match(name):
        shown = repr(name)[:60] if isinstance(name, str) else "not a string"
        raise SpecError(f"invalid kernel name {shown} in '{key}': use letters, digits, '.', "
                        "'-' and '_' only, at most 128, not '.' first")
    return name


def parse_kernels_request(body: Any) -> KernelsRequest:
    """The checked ``POST kernels`` body; :class:`SpecError` (400) saying what is wrong."""
    if not isinstance(body, dict):
        raise SpecError('the request body must be a JSON object such as '
                        '{"target": "beast", "via": ["unicorn"]}')
    unknown = sorted(set(body) - set(KERNELS_FIELDS))
    if unknown:
        raise SpecError(f"unknown field {unknown[0]!r}: a kernels request takes only "
                        f"{', '.join(KERNELS_FIELDS)}")
    target = body.get("target")
    if not isinstance(target, str) or not target.strip():
        raise SpecError("'target' is required: the host whose kernels to use, such as \"beast\"")
    _one_line(target, "target", MAX_HOST_TEXT, "a host name")
    via = body.get("via")
    if via is None:
        via = []
    if not isinstance(via, list) or not all(isinstance(v, str) for v in via):
        raise SpecError("'via' must be a list of jump host names, such as [\"unicorn\"]")
    if len(via) > MAX_VIA:
        raise SpecError(f"'via' names more than {MAX_VIA} jump hosts")
    for hop in via:
        _one_line(hop, "via", MAX_HOST_TEXT, "a list of jump host names")
    kernels = body.get("kernels")
    if kernels is None:
        kernels = []
    if not isinstance(kernels, list):
        raise SpecError("'kernels' must be a list of the target's kernel names, such as "
                        "[\"python3\"] (none or empty: all of them)")
    if len(kernels) > MAX_KERNELS:
        raise SpecError(f"'kernels' names more than {MAX_KERNELS} kernels")
    kernels = list(dict.fromkeys(check_kernel_name(k, "kernels") for k in kernels))
    cwd = body.get("cwd")
    if cwd is None:
        cwd = ""
    cwd = _one_line(cwd, "cwd", MAX_CWD, "a folder path on the target")
    if cwd.startswith("-"):
        raise SpecError("'cwd' must be a folder path on the target, not an option")
    spec = build_spec(target, via)  # checks each host; "beast via unicorn" works too
    return KernelsRequest(spec, kernels, cwd)



class KernelsAPI:
    """The kernels part of the REST service (its manager, target checks and locks)."""

    manager: TunnelManager
    _lock: threading.Lock
    _installing: dict[str, threading.Lock]

    def check_allowed(self, spec: TunnelSpec) -> None:
        raise NotImplementedError

    def check_chain(self, chain: Sequence[ResolvedHop]) -> None:
        raise NotImplementedError

    def kernels(self) -> dict[str, Any]:
        """The kernelspecs of ours installed here, and the remote kernels running."""
        installed = [{k: v for k, v in spec.items() if k != "resource_dir"}
                     for spec in kernel_service.installed()]
        return {"installed": installed, "running": kernel_service.running(self.manager)}

    def install_kernels(self, request: KernelsRequest) -> Sequence[dict[str, Any]]:
        """Install kernelspecs for the target's kernels (all, or those named), after the
        same checks as opening a tunnel to it; what was installed.  Blocking: it opens a
        tunnel to the target and closes it."""
        self.check_allowed(request.spec)
        config = SSHConfig(self.manager.ssh_config or None)
        self.check_chain(resolve_chain(request.spec.target, request.spec.via, config))
        key = request.target.lower()
        with self._lock:
            lock = self._installing.setdefault(key, threading.Lock())
        with lock:
            done = kernel_service.install_remote(
                request.target, request.via, kernels=request.kernels or None,
                cwd=request.cwd, ssh_config=self.manager.ssh_config or None,
                manager=self.manager,
                # a hop that asks: the question shows on its tunnel's row, answered there
                ask=Mailbox(self.manager.answer_timeout + 5))
        log.info("kernelspecs installed for %s: %s", request.target,
                 ", ".join(str(k["name"]) for k in done) or "none")
        return done

    def remove_kernel(self, name: str) -> str:
        """Remove one kernelspec of ours (:class:`KernelSpecNotFound` for any other)."""
        check_kernel_name(name)
        kernel_service.remove([name])
        log.info("kernelspec %s removed", name)
        return name

