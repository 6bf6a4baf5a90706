"""footprint.py's processes: the process table, memory, roles, sshd figures, and which
processes a run counts on which host (its snapshots)."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Any

from procs import pss_mb, rss_mb

#: where a process runs (this machine and the sandbox's hosts), as the figures name them
HOSTS = ["here", "unicorn", "beast"]
#: in the environment of the worker and of every process it starts here
MARKER = "JT_FOOTPRINT"
SANDBOX_MARKER = "JT_SANDBOX"  # jupyter_tunnel.sandbox.MARKER: in every ssh session's env


def memory_mb(pid: int) -> tuple[float, float]:
    """(PSS, RSS) of a process in MB (10^6 bytes); (0, 0) when it is gone."""
    return pss_mb([pid]), rss_mb([pid])


def _netns(pid: int | str) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return ""


def processes() -> dict[int, dict[str, Any]]:
    """Every process: {pid: {start, ppid, net, env (raw bytes), cmd}} (kernel threads left
    out: no cmdline)."""
    out: dict[int, dict[str, Any]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            stat = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(entry.path, "cmdline").read_bytes()
            env = Path(entry.path, "environ").read_bytes()
        except (OSError, IndexError):
            continue
        if not cmd or stat[0] in "ZX":
            continue
        out[pid] = {"start": int(stat[19]), "ppid": int(stat[1]), "net": _netns(pid),
                    "env": b"\0" + env, "cmd": cmd.replace(b"\0", b" ").decode(
                        errors="replace").strip()[:160]}
    return out


def role(host: str, cmd: str) -> str:
    """What a counted process is, from its host and command line."""
    if cmd.startswith(("sshd", "/usr/sbin/sshd")):
        return "sshd (per connection)"
    if host == "here":
        if cmd.startswith("ssh ") and " -W " in cmd:
            return "ssh ProxyJump helper (ssh -W)"
        if cmd.startswith("ssh ") and " -M " in cmd:
            return "ssh ControlMaster"
        return "other"
    if "ipykernel_launcher" in cmd:
        return "ipykernel"
    if " -I -c import sys;exec(" in cmd:
        return "resume helper (python -I)"
    if " -c import sys;exec(" in cmd:
        return "kernel nanny (python)"
    return "other"


def by_role(processes_: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """{"HOST: ROLE": {processes, pss_mb, rss_mb}} of a snapshot's processes."""
    out: dict[str, dict[str, float]] = {}
    for proc in processes_:
        entry = out.setdefault(f"{proc['host']}: {proc['role']}",
                               {"processes": 0.0, "pss_mb": 0.0, "rss_mb": 0.0})
        entry["processes"] += 1
        entry["pss_mb"] += proc["pss_mb"]
        entry["rss_mb"] += proc["rss_mb"]
    return out


def tcp_into(pid: int, address: str, port: int) -> int:
    """Established TCP connections whose local end is address:port, in the network namespace
    of process pid (its /proc/PID/net/tcp)."""
    local = f"{socket.inet_aton(address)[::-1].hex().upper()}:{port:04X}"
    try:
        rows = Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return 0
    return sum(1 for row in rows if row.split()[1] == local and row.split()[3] == "01")


def log_counts(path: Path) -> dict[str, int]:
    """In an sshd log (LogLevel VERBOSE): logins accepted and sessions started (OpenSSH 9.2
    logs no session's end at this level)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return {"logins": 0, "started": 0}
    return {"logins": len(re.findall(r"Accepted \S+ for ", text)),
            "started": text.count("Starting session: ")}


class Census:
    """Which host a process is on, whether it is the run's, and the run's snapshots.  The
    sandbox's sshd per host (``sshd_pid``) and their namespaces (``host_net``) are filled in
    once the sandbox is up."""

    def __init__(self, net: Any) -> None:
        self.net = net  # the Sandbox
        self.here_net = _netns("self")
        self.host_net: dict[str, str] = {}
        self.sshd_pid: dict[str, int] = {}

    def host_of(self, info: dict[str, Any]) -> str | None:
        if info["net"] == self.here_net:
            return "here"
        for name, net in self.host_net.items():
            if info["net"] == net:
                return name
        return None

    def counted(self, pid: int, info: dict[str, Any], run_dir: Path,
                table: dict[int, dict[str, Any]] | None = None) -> bool:
        """A process of the run: the run's marker (here), the sandbox's marker or a
        descendant of the sandbox's sshd (unicorn, beast)."""
        host = self.host_of(info)
        if host is None or pid == os.getpid():
            return False
        if host == "here":
            return f"\0{MARKER}={run_dir}\0".encode() in info["env"]
        if pid == self.sshd_pid[host]:
            return False  # the listener: the sandbox's, before any run
        if f"\0{SANDBOX_MARKER}={self.net.dir}\0".encode() in info["env"]:
            return True
        seen, parent = 0, info["ppid"]
        while table is not None and parent > 1 and seen < 64:
            if parent == self.sshd_pid[host]:
                return True
            parent, seen = table.get(parent, {}).get("ppid", 0), seen + 1
        return False

    def snapshot(self, baseline: set[tuple[int, int]], run_dir: Path,
                 worker: int) -> dict[str, Any]:
        """Cumulative figures: per host the processes of the run not in the baseline and
        their PSS and RSS; the worker's PSS and RSS; per sshd its processes, established
        TCP connections, logins and open sessions (from its log)."""
        table_ = processes()
        figures: dict[str, float] = {f"{h}_{k}": 0.0 for h in HOSTS
                                     for k in ("processes", "pss_mb", "rss_mb")}
        listed: list[dict[str, Any]] = []
        for pid, info in sorted(table_.items()):
            if (pid, info["start"]) in baseline or pid == worker:
                continue
            if not self.counted(pid, info, run_dir, table_):
                continue
            host = self.host_of(info)
            pss, rss = memory_mb(pid)
            figures[f"{host}_processes"] += 1
            figures[f"{host}_pss_mb"] += pss
            figures[f"{host}_rss_mb"] += rss
            parent = table_.get(info["ppid"], {}).get("cmd", "?")
            listed.append({"host": host, "role": role(str(host), info["cmd"]),
                           "pid": pid, "ppid": info["ppid"],
                           "parent": parent[:40], "cmd": info["cmd"],
                           "pss_mb": round(pss, 3), "rss_mb": round(rss, 3)})
        figures["python_pss_mb"], figures["python_rss_mb"] = memory_mb(worker)
        for name in ("unicorn", "beast"):
            sandbox_host = self.net.hosts[name]
            sshd = [p for p, i in table_.items()
                    if self.host_of(i) == name and i["cmd"].startswith(("sshd", "/usr/sbin/sshd"))
                    and p != self.sshd_pid[name]]
            figures[f"{name}_sshd"] = len(sshd)
            # a session's command is a child of its connection's sshd
            figures[f"{name}_sessions"] = sum(
                1 for i in table_.values()
                if i["ppid"] in sshd and not i["cmd"].startswith(("sshd", "/usr/sbin/sshd")))
            figures[f"{name}_tcp"] = tcp_into(self.sshd_pid[name], sandbox_host.address,
                                              sandbox_host.port)
            logged = log_counts(self.net.dir / name / "sshd.log")
            figures[f"{name}_logins"] = logged["logins"]
            figures[f"{name}_sessions_started"] = logged["started"]
        return {"figures": figures, "processes": listed}
