"""The leftovers check of CI (.ci/leftovers): quiet after a clean run, failing and naming
what a run leaves behind (a folder, a process in a session of its own, a namespace, a link,
a route)."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need

SCRIPT = Path(__file__).resolve().parent.parent / ".ci" / "leftovers"


def leftovers(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def pids_of(cmdline: str) -> set[int]:
    """Live processes whose command line is exactly cmdline."""
    found = set()
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and Path(entry.path, "cmdline").read_bytes().replace(
                    b"\0", b" ").strip() == cmdline.encode():
                state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state not in "ZX":
                    found.add(int(entry.name))
    return found


@pytest.fixture
def private(tmp_path: Path) -> list[str]:
    """A temp folder and a runtime dir of this test, checked instead of the machine's own
    (which other test runs on this machine may change meanwhile)."""
    (tmp_path / "tmp").mkdir()
    (tmp_path / "rt").mkdir()
    return ["--tmp", str(tmp_path / "tmp"), "--runtime", str(tmp_path / "rt")]


@pytest.fixture
def sleeper() -> Iterator[str]:
    """A unique `sleep` command line; any such process is killed at the end."""
    seconds = f"{300 + secrets.randbelow(10**6) / 10**7:.7f}"
    yield f"sleep {seconds}"
    for pid in pids_of(f"sleep {seconds}"):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def test_a_clean_run_passes(tmp_path: Path, private: list[str]) -> None:
    # files made and removed, a child that ends at once, a daemon that ends during the grace
    script = (f"touch {tmp_path}/tmp/gone && rm {tmp_path}/tmp/gone && true && "
              "(setsid sleep 1 &) && echo hello")
    res = leftovers("run", *private, "--only", "files,processes,sockets", "--grace", "20",
                    "--", "sh", "-c", script)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "hello\n"
    assert "leftovers: nothing left behind" in res.stderr


def test_orphans_that_end_are_reaped_while_the_command_runs(private: list[str]) -> None:
    """An orphan comes to the check (its subreaper): once it ends it must be gone, not a
    zombie that still answers kill -0 (a test waiting for a server to die would wait in
    vain)."""
    orphan = ("import os, subprocess, sys, time\n"
              "pid = int(subprocess.run(['sh', '-c', 'sleep 0.2 >/dev/null & echo $!'],"
              " capture_output=True, text=True).stdout)\n"
              "end = time.monotonic() + 20\n"
              "while time.monotonic() < end:\n"
              "    try:\n"
              "        os.kill(pid, 0)\n"
              "    except ProcessLookupError:\n"
              "        sys.exit(0)\n"
              "    time.sleep(0.05)\n"
              "sys.exit(1)\n")
    result = leftovers("run", *private, "--only", "processes", "--", sys.executable, "-c",
                       orphan)
    assert result.returncode == 0, result.stderr


def test_the_command_fails_the_run_by_itself(private: list[str]) -> None:
    res = leftovers("run", *private, "--only", "files", "--", "sh", "-c", "exit 7")
    assert res.returncode == 7, res.stderr


def test_a_leaked_folder_and_daemon_fail_the_run(tmp_path: Path, private: list[str],
                                                 sleeper: str) -> None:
    leak = tmp_path / "tmp" / "jupyter_tunnel-0-leaked"
    script = f"mkdir {leak} && touch {leak}/sock && (setsid {sleeper} </dev/null >/dev/null &)"
    res = leftovers("run", *private, "--only", "files,processes", "--grace", "1",
                    "--", "sh", "-c", script)
    assert res.returncode == 3, res.stderr
    assert "leftovers: 3 new thing(s) left behind by the run:" in res.stderr
    assert f"files     {leak} (dir)" in res.stderr
    assert f"files     {leak}/sock (file)" in res.stderr
    assert f"(parent {os.getpid()}" not in res.stderr  # reparented to the check, not to us
    assert f": {sleeper}\n" in res.stderr
    # run killed the daemon, which was its own (a descendant); files stay for a look
    assert "killed the 1 leaked process(es)" in res.stderr
    assert not pids_of(sleeper)
    assert leak.is_dir()


def test_snapshot_then_compare_names_what_is_new(tmp_path: Path, private: list[str],
                                                 sleeper: str) -> None:
    snap = tmp_path / "before.json"
    assert leftovers("snapshot", str(snap), *private).returncode == 0
    res = leftovers("compare", str(snap), "--only", "files", "--grace", "0")
    assert res.returncode == 0, res.stderr
    (tmp_path / "rt" / "jupyter_tunnel").mkdir()
    (tmp_path / "rt" / "jupyter_tunnel" / "t1.json").write_text("{}")
    proc = subprocess.Popen(sleeper.split(), start_new_session=True)
    try:
        # the whole machine's processes: other runs' may be named too, ours must be
        res = leftovers("compare", str(snap), "--only", "files,processes", "--grace", "1")
        assert res.returncode == 3, res.stderr
        assert f"{tmp_path}/rt/jupyter_tunnel (dir)" in res.stderr
        assert f"{tmp_path}/rt/jupyter_tunnel/t1.json (file)" in res.stderr
        assert f"pid {proc.pid} (parent {os.getpid()}): {sleeper}\n" in res.stderr
    finally:
        proc.kill()
        proc.wait()


def test_network_leftovers_fail_the_run(private: list[str]) -> None:
    if os.geteuid() != 0:
        need("namespaces, links and routes need root")
    tag = f"jtlo{os.getpid() % 100000}"
    n = 1 + os.getpid() % 250
    # documentation ranges (RFC 5737, 3849), as unreachable routes: no packet goes anywhere
    v4, v6 = f"203.0.113.{n}/32", f"2001:db8::{n:x}/128"
    script = (f"ip netns add {tag} && ip link add {tag}-x type veth peer name {tag}-y && "
              f"ip route add unreachable {v4} && ip -6 route add unreachable {v6}")
    try:
        res = leftovers("run", *private, "--only", "netns,links,routes", "--", "sh", "-c",
                        script)
        assert res.returncode == 3, res.stderr
        assert f"  netns     {tag}\n" in res.stderr
        assert f"  links     {tag}-x\n" in res.stderr
        assert f"  links     {tag}-y\n" in res.stderr
        assert f"  routes    4: unreachable {v4.removesuffix('/32')}" in res.stderr
        assert f"  routes    6: unreachable {v6.removesuffix('/128')}" in res.stderr
    finally:
        for argv in (["ip", "netns", "del", tag], ["ip", "link", "del", f"{tag}-x"],
                     ["ip", "route", "del", "unreachable", v4],
                     ["ip", "-6", "route", "del", "unreachable", v6]):
            subprocess.run(argv, capture_output=True, check=False)
    deadline = time.monotonic() + 5
    while tag in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                text=True).stdout and time.monotonic() < deadline:
        time.sleep(0.05)
