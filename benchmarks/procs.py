"""The benchmark's processes: tunnels of each contender, and what they cost (CPU, memory)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jupyter_tunnel.detect import RemoteServer, status_once

HERE = Path(__file__).resolve().parent
TICK = os.sysconf("SC_CLK_TCK")
READY_DEADLINE_S = 30.0
#: a contender name ending so carries resumable connections (``TunnelManager.resume``)
RESUME = "-resume"


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state is [0])."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_by_pid(pids: list[int]) -> dict[int, float]:
    """User plus system CPU seconds used so far by each of these processes (0 when gone)."""
    out: dict[int, float] = {}
    for pid in set(pids):
        out[pid] = 0.0
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = _stat(pid)
            out[pid] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds used so far by these processes together."""
    return sum(cpu_by_pid(pids).values())


def _kb_field(path: str, name: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(name):
                return int(line.split()[1]) * 1024
    return 0


def rss_mb(pids: list[int]) -> float:
    """Resident memory of these processes summed, in MB (10^6 bytes): a shared library
    counts once per process that maps it."""
    return sum(_kb_field(f"/proc/{pid}/status", "VmRSS:") for pid in set(pids)) / 1e6


def pss_mb(pids: list[int]) -> float:
    """Proportional set size of these processes summed, in MB: each shared page counts as
    its share among the processes that map it (so 40 ssh count their libraries once)."""
    return sum(_kb_field(f"/proc/{pid}/smaps_rollup", "Pss:") for pid in set(pids)) / 1e6


def start_time(pid: int) -> int | None:
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(_stat(pid)[19])
    return None


def alive(pid: int) -> bool:
    with contextlib.suppress(OSError, IndexError):
        return _stat(pid)[0] not in "ZX"
    return False


def children_of(pid: int) -> list[int]:
    """The direct children of a process."""
    with contextlib.suppress(OSError):
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def process_role(pid: int) -> str:
    """``python``, ``ssh_master`` (``ssh -M``), ``jump_helper`` (``ssh -W``, ProxyJump's),
    ``ssh`` (any other ssh), or ``other``."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "gone"
    name = os.path.basename(argv[0])
    if name.startswith("python"):
        return "python"
    if name == "ssh":
        return "jump_helper" if "-W" in argv else "ssh_master" if "-M" in argv else "ssh"
    return "other"


def _end_helpers(identities: list[tuple[int, int | None]]) -> list[str]:
    """Wait up to 5 s for these processes (pid, start time) to end after their tunnel
    closed; kill and name those that did not."""
    deadline = time.monotonic() + 5
    while any(alive(p) and start_time(p) == s for p, s in identities) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    problems = []
    for pid, started in identities:
        if alive(pid) and start_time(pid) == started:
            problems.append(f"pid {pid} still running after close: killed")
            kill_if_same(pid, started)
    return problems


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(port: int, jupyter_port: int, token: str) -> int:
    """``api/status`` through a local port (0: no answer)."""
    server = RemoteServer(port=jupyter_port, pid=0, alive=True, mtime=0.0, token=token)
    return status_once(server, port, 2.0)


def kill_if_same(pid: int, started: int | None) -> None:
    """SIGTERM, then SIGKILL, a process if it still is the one that started then."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if started is None or start_time(pid) != started or not alive(pid):
            return
        with contextlib.suppress(OSError):
            os.kill(pid, sig)
        deadline = time.monotonic() + 3
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)


class Procs:
    """Starts and ends the contenders' tunnels; ``live`` holds all not yet closed."""

    def __init__(self, bench: Any) -> None:
        self.bench = bench
        self.live: list[dict[str, Any]] = []
        self.packages: dict[str, str] = {}  # contender: the jupyter_tunnel it imported

    @property
    def cwd(self) -> Path:
        """An empty folder to run the contenders' processes in (``python -m`` puts the
        current folder first on sys.path: it must hold no jupyter_tunnel)."""
        folder = Path(self.bench.runtime) / "cwd"
        folder.mkdir(exist_ok=True)
        return folder

    def env(self, contender: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("JUPYTER_TUNNEL_BACKEND", "SSH_AUTH_SOCK", "PYTHONPATH")}
        env["JUPYTER_RUNTIME_DIR"] = str(self.runtime_of(contender))
        if contender == "jt-baseline":
            env["PYTHONPATH"] = str(Path(self.bench.baseline).resolve())
        return env

    def runtime_of(self, contender: str) -> Path:
        """The contender's JUPYTER_RUNTIME_DIR, which holds its ssh masters' sockets: the
        resume contenders' own, so that jt-openssh-resume never shares jt-openssh's master
        (each contender's bytes go through its own processes)."""
        folder = Path(self.bench.runtime)
        if self.resume(contender):
            folder /= "resume"
            folder.mkdir(mode=0o700, exist_ok=True)
        return folder

    @staticmethod
    def backend(contender: str) -> str:
        return "openssh" if contender.startswith("jt-openssh") else "sshtunnel"

    @staticmethod
    def resume(contender: str) -> bool:
        return contender.endswith(RESUME)

    def _check_package(self, contender: str, path: str) -> None:
        """The contender imported the jupyter_tunnel it should (baseline: DIR's)."""
        want = Path(self.bench.baseline if contender == "jt-baseline" else HERE.parent)
        if not Path(path).resolve().is_relative_to(want.resolve()):
            raise RuntimeError(f"{contender} imported {path}, not the package in {want}")
        self.packages[contender] = path

    def open(self, contender: str, count: int, forward: int) -> dict[str, Any]:
        """Tunnels of a contender: a holder process (jupyter_tunnel) or ssh (reference)."""
        if contender == "openssh":
            return self._open_openssh(count, forward)
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "holder.py"), str(self.bench.net.ssh_config),
             self.backend(contender), str(count), str(forward),
             *(["resume"] if self.resume(contender) else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=self.env(contender),
            cwd=self.cwd)
        info: dict[str, Any] = {"contender": contender, "proc": proc, "pids": [proc.pid]}
        self.live.append(info)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{contender}: the tunnel holder failed (exit {proc.wait()})")
        info.update(json.loads(line))
        info.update(info["tunnels"][0])
        self._check_package(contender, info["package"])
        info["pids"] = [info["pid"]] + [p for t in info["tunnels"] for p in t["children"]]
        info["roles"] = {pid: process_role(pid) for pid in info["pids"]}
        # the resume helpers run on beast (same pid namespace): counted apart from pids
        info["helpers"] = [tuple(t["helper"]) for t in info["tunnels"] if t.get("helper")]
        info["roles"].update({pid: "resume_helper" for pid, _ in info["helpers"]})
        return info

    def _open_openssh(self, count: int, forward: int) -> dict[str, Any]:
        net = self.bench.net
        jupyter = net.jupyter
        info: dict[str, Any] = {"contender": "openssh", "ssh": [], "open_s": [], "proc": None,
                                "pids": []}
        self.live.append(info)
        ports = []
        for _ in range(count):
            local, extra = free_port(), free_port()
            argv = ["ssh", "-F", str(net.ssh_config), "-N", "-J", "unicorn",
                    "-L", f"127.0.0.1:{local}:127.0.0.1:{jupyter.port}"]
            if forward:
                argv += ["-L", f"127.0.0.1:{extra}:127.0.0.1:{forward}"]
            t0 = time.perf_counter()
            proc = subprocess.Popen([*argv, "beast"], stdin=subprocess.DEVNULL,
                                    env=self.env("openssh"), cwd=self.cwd)
            info["ssh"].append(proc)
            deadline = time.monotonic() + READY_DEADLINE_S
            while _status(local, jupyter.port, jupyter.token) != 200:
                if proc.poll() is not None:
                    raise RuntimeError(f"ssh exited with {proc.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ssh -L not ready in {READY_DEADLINE_S:.0f} s")
                time.sleep(0.005)
            info["open_s"].append(time.perf_counter() - t0)
            ports.append((local, extra if forward else None))
        info.update(local_port=ports[0][0], forward_port=ports[0][1])
        info["pids"] = [p for proc in info["ssh"] for p in [proc.pid, *children_of(proc.pid)]]
        info["roles"] = {pid: process_role(pid) for pid in info["pids"]}
        return info

    def pids_of(self, info: dict[str, Any]) -> list[int]:
        return list(info["pids"])

    def forwarding_pids(self, contender: str) -> list[int]:
        """The processes that carry the contender's main tunnel (with its resume helper)."""
        if contender == "ceiling":
            return []
        info = self.bench.tunnels[contender]
        return self.pids_of(info) + self.helper_pids(info)

    @staticmethod
    def helper_pids(info: dict[str, Any]) -> list[int]:
        """The resume helpers of a contender's tunnels (on beast)."""
        return [pid for pid, _ in info.get("helpers", [])]

    @staticmethod
    def check_own_ssh(info: dict[str, Any]) -> None:
        """A tunnel opened with nothing else up must count its own ssh processes: for
        jt-openssh its ssh master and that master's ProxyJump helper (none of them when a
        leftover master was reused), for the reference its ssh and helper."""
        want = {"jt-openssh": {"python", "ssh_master", "jump_helper"},
                "openssh": {"ssh", "jump_helper"}}.get(info["contender"].removesuffix(RESUME))
        roles = set(info["roles"].values())
        if want is not None and not want <= roles:
            raise RuntimeError(f"{info['contender']}: its processes {info['roles']} lack "
                               f"{sorted(want - roles)} (a leftover ssh master reused?)")

    def close(self, info: dict[str, Any]) -> None:
        """End a contender's tunnels; raise if they did not end cleanly (after ending
        them anyway)."""
        if info in self.live:
            self.live.remove(info)
        problems = []
        if info.get("detached"):
            problems += self._close_detached(info)
        proc = info.get("proc")
        if proc is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
            try:
                if proc.wait(30) != 0:
                    problems.append(f"holder exited with {proc.returncode}")
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                problems.append("holder did not exit in 30 s: killed")
            problems += _end_helpers(info.get("helpers", []))
        for proc in info.get("ssh", []):
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                problems.append(f"ssh {proc.pid} did not end on SIGTERM: killed")
        if problems:
            raise RuntimeError(f"{info['contender']}: {'; '.join(problems)}")

    def close_all(self) -> None:
        """Close everything still open, each even when another fails; then raise the first
        failure."""
        errors = []
        for info in list(reversed(self.live)):
            try:
                self.close(info)
            except Exception as exc:  # close the others first
                errors.append(exc)
        if errors:
            raise errors[0]

    def _cli(self, contender: str, *args: str, timeout: float = 120
             ) -> subprocess.CompletedProcess[str]:
        """``python -m jupyter_tunnel ARGS`` run from the runtime dir (a neutral folder:
        ``-m`` puts the current folder first on sys.path)."""
        argv = [sys.executable, "-m", "jupyter_tunnel", *args,
                "--ssh-config", str(self.bench.net.ssh_config)]
        return subprocess.run(argv, capture_output=True, text=True, env=self.env(contender),
                              timeout=timeout, check=False, cwd=self.cwd)

    def _close_detached(self, info: dict[str, Any]) -> list[str]:
        problems = []
        try:
            result = self._cli(info["contender"], "close", info["name"], timeout=60)
            if result.returncode != 0:
                problems.append(f"close exited with {result.returncode}: {result.stderr[-500:]}")
        except subprocess.TimeoutExpired:
            problems.append("close took over 60 s")
        return problems + _end_helpers(info["identities"])

    def _check_sys_path(self, contender: str, pid: int) -> None:
        """The detached process imports what it should: ``python -m`` put its current folder
        first on sys.path, so that must hold no other jupyter_tunnel, and its PYTHONPATH
        (the baseline's folder, or none) is the one it was given."""
        want = Path(self.bench.baseline if contender == "jt-baseline" else HERE.parent)
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        path = next((e.split(b"=", 1)[1].decode() for e in environ
                     if e.startswith(b"PYTHONPATH=")), None)
        if ((cwd / "jupyter_tunnel" / "__init__.py").exists() and cwd.resolve() != want.resolve()) \
                or path != self.env(contender).get("PYTHONPATH"):
            raise RuntimeError(f"{contender}: the detached process (cwd {cwd}, PYTHONPATH "
                               f"{path}) may not import the package in {want}")

    def detached_rss(self, contender: str) -> tuple[float, float]:
        """RSS and PSS of a real ``jupyter tunnel open --detach`` process (and of the ssh
        processes it started), in MB."""
        probe = subprocess.run(
            [sys.executable, "-c", "import jupyter_tunnel; print(jupyter_tunnel.__file__)"],
            capture_output=True, text=True, env=self.env(contender), cwd=self.cwd,
            check=True)
        self._check_package(contender, probe.stdout.strip())
        name = f"bench-{contender}"
        info: dict[str, Any] = {"contender": contender, "detached": True, "name": name,
                                "identities": []}
        self.live.append(info)
        result = self._cli(contender, "open", "beast", "--via", "unicorn", "--detach",
                           "--json", "--name", name,
                           f"--TunnelManager.backend={self.backend(contender)}",
                           "--resume" if self.resume(contender) else "--no-resume")
        try:
            record = json.loads(result.stdout)
        except ValueError:
            record = {}
        if result.returncode != 0 or "pid" not in record:
            raise RuntimeError(f"{contender}: jupyter tunnel open failed "
                               f"(exit {result.returncode}): {result.stderr[-1000:]}")
        pids = [record["pid"], *(c["pid"] for c in record.get("children", []))]
        info["identities"] = [(p, start_time(p)) for p in pids]
        helper = (record.get("resume") or {}).get("helper")
        if helper:  # closing the tunnel must end it too
            info["identities"].append((helper["pid"], helper["started"]))
        elif self.resume(contender):
            raise RuntimeError(f"{contender}: the detached tunnel has no resume helper: "
                               f"{record.get('resume')}")
        info["pids"] = pids
        self._check_sys_path(contender, record["pid"])
        time.sleep(1.0)  # let it settle (first health check, registry writes)
        sizes = rss_mb(pids), pss_mb(pids)
        self.close(info)
        return sizes

    @contextlib.contextmanager
    def streaming(self, contender: str, port: int) -> Iterator[dict[str, Any]]:
        """A download running through the contender's tunnel meanwhile; yields a dict that
        holds its bytes, seconds and MB/s afterwards.  Raises if it did not start, or had
        stopped before the measurement ended."""
        argv = [sys.executable, str(HERE / "client.py"), "stream", "127.0.0.1", str(port)]
        if contender == "ceiling":
            proc = self.bench.net.popen_in("beast", argv, stdout=subprocess.PIPE, text=True)
        else:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        out: dict[str, Any] = {}
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            if json.loads(first or "{}").get("streaming") is not True:
                raise RuntimeError(f"{contender}: the background download did not start "
                                   f"({first.strip()!r}, exit {proc.poll()})")
            time.sleep(0.3)  # up to speed
            yield out
            if proc.poll() is not None:
                raise RuntimeError(f"{contender}: the background download had stopped "
                                   f"(exit {proc.returncode}) before the measurement ended")
            proc.terminate()
            tail = proc.stdout.read()
            proc.wait(10)
            last = json.loads(tail.strip().splitlines()[-1])
            if last.get("ended") or not last.get("bytes"):
                raise RuntimeError(f"{contender}: the background download failed: {tail!r}")
            out.update(last, mbps=last["bytes"] / last["seconds"] / 1e6)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
