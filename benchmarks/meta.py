"""What a benchmark run measured on: the code (ours and the baseline's), machine, load."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PACKAGE = "jupyter_tunnel"


def _out(argv: list[str], cwd: Path | None = None) -> str:
    """stdout of argv ("" when it fails)."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False,
                           cwd=cwd)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return r.stdout.strip() if r.returncode == 0 else ""


def git_toplevel(folder: Path) -> Path | None:
    """The checkout whose top folder is ``folder`` (None when it is not one: a folder
    inside another checkout does not count, its commit would say nothing of the folder)."""
    top = _out(["git", "-C", str(folder), "rev-parse", "--show-toplevel"])
    if top and Path(top).resolve() == folder.resolve():
        return folder.resolve()
    return None


def code_state(checkout: Path) -> dict[str, Any]:
    """``git describe --always --dirty`` of a checkout, and a hash of what differs from its
    commit: ``git diff HEAD`` plus the names and contents of the untracked files under
    jupyter_tunnel/ (new modules do not make ``describe`` say -dirty)."""
    git = ["git", "-C", str(checkout)]
    describe = _out([*git, "describe", "--always", "--dirty"])
    diff = _out([*git, "diff", "HEAD", "--binary"])
    untracked = [name for name in _out([*git, "ls-files", "--others", "--exclude-standard",
                                        "--", PACKAGE]).splitlines() if name]
    digest = hashlib.sha256(diff.encode())
    for name in sorted(untracked):
        digest.update(b"\0" + name.encode() + b"\0")
        try:
            digest.update((checkout / name).read_bytes())
        except OSError:
            digest.update(b"<unreadable>")
    changed = bool(diff) or bool(untracked)
    return {"describe": describe, "commit": _out([*git, "rev-parse", "HEAD"]),
            "uncommitted": changed, "untracked_in_package": untracked,
            "changes_sha256": digest.hexdigest() if changed else None}


def _os_name() -> str:
    with_name = Path("/etc/os-release")
    if with_name.exists():
        for line in with_name.read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip().strip('"')
    return platform.platform()


def _mem_total_mb() -> float | None:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024 / 1e6
    return None


def meta(started: float, load_before: tuple[float, float, float], cfg: dict[str, Any],
         contenders: list[str], baseline: str | None, extra: dict[str, Any],
         code: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the figures were measured on; ``code``: :func:`code_state` taken when the run
    started (the checkout may change during a long run), else taken now."""
    import paramiko

    cpuinfo = Path("/proc/cpuinfo").read_text()
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines()
                if ln.startswith("model name")), platform.processor())
    ours = code if code is not None else code_state(HERE.parent)
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "commit": ours["describe"], "code": ours,
        "uncommitted_changes": ours["uncommitted"],
        "cpu": cpu, "cores": os.cpu_count(), "aes_ni": " aes " in cpuinfo.replace("\n", " "),
        "memory_mb": _mem_total_mb(), "kernel": platform.release(), "os": _os_name(),
        "load_before": load_before, "load_after": os.getloadavg(),
        "ssh": _ssh_version(), "python": platform.python_version(),
        "paramiko": paramiko.__version__, "config": cfg, "contenders": contenders,
        "baseline": baseline, "baseline_code": None,
    }
    if baseline:
        top = git_toplevel(Path(baseline))
        info["baseline_code"] = code_state(top) if top else "not a git checkout"
    info.update(extra)
    return info


def _ssh_version() -> str:
    try:
        r = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=10,
                           check=False)
    except OSError:
        return ""
    return (r.stderr or r.stdout).strip()
