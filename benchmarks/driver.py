"""What every benchmark driver (run.py, kernels.py, footprint.py, soak.py) does the same way:
alternate its contenders, run every cleanup step, leave through ``finally`` on a signal,
find what a run left by its marker, and note the versions it ran with."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jupyter_tunnel.sandbox import Sandbox

#: the packages whose versions the remote-kernel benchmarks note
KERNEL_PACKAGES = ("jupyter_client", "ipykernel", "pyzmq", "sshtunnel")


def rotate(items: list[str], k: int) -> list[str]:
    """The contenders in turn, each repetition starting with another one."""
    k %= max(1, len(items))
    return items[k:] + items[:k]


def each(*steps: Callable[[], object],
         report: Callable[[str], None] | None = None) -> None:
    """Run every step even when one fails (or is interrupted); then raise the first error,
    or with ``report`` only report the errors."""
    first: BaseException | None = None
    for step in steps:
        try:
            step()
        except BaseException as exc:  # the next steps must run too
            first = first or exc
            if report is not None:
                report(f"cleanup: {type(exc).__name__}: {exc}")
    if first is not None and report is None:
        raise first


def exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM/SIGHUP: exit through sys.exit, so that finally blocks and atexit clean up
    (further signals are ignored meanwhile)."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    sys.exit(128 + signum)


def start_as_root() -> None:
    """What a driver's main does first: refuse to run without root (namespaces) and ssh,
    and let SIGTERM and SIGHUP leave through ``finally`` (:func:`exit_on_signal`)."""
    if os.geteuid() != 0 or not shutil.which("ssh"):
        sys.exit("the benchmark needs root (network namespaces), sshd and ssh: see "
                 "benchmarks/README.md")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, exit_on_signal)


def end_run(stop_worker: Callable[[], object], net: Sandbox, marker: str, folder: Path,
            report: Callable[[str], None]) -> None:
    """The end of a run with workers (kernels.py, footprint.py), whatever happened: the
    worker, the processes here that carry the run's marker, the sandbox (it ends what runs
    in its namespaces), the run's folder; every step runs, errors are reported."""
    from jupyter_tunnel.sandbox_procs import _kill_pids

    each(stop_worker,
         lambda: _kill_pids(pids_with_marker_prefix(marker, str(folder))),
         net.stop,
         lambda: shutil.rmtree(folder, ignore_errors=True),
         report=report)


def pids_with_marker_prefix(marker: str, prefix: str) -> set[int]:
    """Pids (not this one) whose environment has ``marker=<a folder under prefix>``."""
    needle, pids = f"\0{marker}={prefix}".encode(), set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if needle in b"\0" + Path(entry.path, "environ").read_bytes():
                pids.add(int(entry.name))
        except OSError:
            continue
    pids.discard(os.getpid())
    return pids


def package_versions(names: Iterable[str]) -> dict[str, str]:
    """The installed version of each package ("" when it is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = ""
    return out
