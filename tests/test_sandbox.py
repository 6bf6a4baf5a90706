"""Smoke tests of the SSH sandbox, through the real OpenSSH client."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import need
from test_faults import describe, processes_of

from jupyter_tunnel.sandbox import MARKER, SSHD, Sandbox

pytestmark = pytest.mark.network


def _need_ssh() -> None:
    missing = [p for p in (SSHD, shutil.which("ssh")) if not p or not Path(p).exists()]
    if missing:
        msg = f"OpenSSH not installed ({SSHD} / ssh); apt-get install -y openssh-server"
        if os.environ.get("JT_REQUIRE_NETWORK") == "1":
            pytest.fail(msg)
        pytest.skip(msg)


def _ssh(sb: Sandbox, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sb.ssh_argv(*args), capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module", params=["auto", "loopback"])
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    _need_ssh()
    if request.param == "loopback" and not Sandbox(jupyter=False).netns:
        pytest.skip("auto mode is loopback already")
    with Sandbox(netns=False if request.param == "loopback" else None) as sb:
        yield sb


def test_ssh_to_jump_host(sandbox: Sandbox) -> None:
    res = _ssh(sandbox, "unicorn", "echo $HOME")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(sandbox.home("unicorn"))


def test_beast_via_jump_host_has_no_jupyter_on_path(sandbox: Sandbox) -> None:
    res = _ssh(sandbox, "beast-via-unicorn", "echo $HOME; command -v jupyter || echo nojupyter")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(sandbox.home("beast")), "nojupyter"]
    res = _ssh(sandbox, "beast-via-unicorn", "bash -lc 'command -v jupyter'")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("/jupyter")


def test_beast_not_reachable_directly(net: Sandbox) -> None:
    if not net.netns:
        need("beast is isolated only in network namespaces (as root)")
    sandbox = net
    beast = sandbox.hosts["beast"]
    t0 = time.monotonic()
    with pytest.raises(OSError):
        socket.create_connection((beast.address, beast.port), timeout=5).close()
    assert time.monotonic() - t0 < 1, "should fail at once (unreachable route)"
    res = _ssh(sandbox, "beast", "true", timeout=20)  # no ProxyJump: must fail
    assert res.returncode == 255


def test_jupyter_on_beast_through_tunnel(sandbox: Sandbox) -> None:
    jup = sandbox.jupyter
    assert jup is not None
    assert (jup.runtime_dir / f"jpserver-{jup.pid}.json").exists()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    fwd = f"127.0.0.1:{port}:127.0.0.1:{jup.port}"
    argv = ["ssh", "-F", str(sandbox.ssh_config), "-N", "-o", "ExitOnForwardFailure=yes"]
    ssh = subprocess.Popen([*argv, "-L", fwd, "beast-via-unicorn"])
    try:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/status", headers={"Authorization": f"token {jup.token}"}
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + 15
        while True:
            try:
                with opener.open(req, timeout=5) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                if time.monotonic() > deadline or ssh.poll() is not None:
                    raise
                time.sleep(0.05)
    finally:
        ssh.terminate()
        ssh.wait(10)


def test_sshd_restart(sandbox: Sandbox) -> None:
    sandbox.stop_sshd("unicorn")
    assert _ssh(sandbox, "unicorn", "true").returncode == 255
    sandbox.start_sshd("unicorn")  # same host key: known_hosts still matches
    res = _ssh(sandbox, "beast-via-unicorn", "true")
    assert res.returncode == 0, res.stderr


def test_sandbox_never_carries_the_callers_environment(net: Sandbox, runtime_dir: Path) -> None:
    """sshd re-executes a child per connection with its own environment, shown in
    /proc/PID/environ until the child sets its title: started with the caller's, it made
    a test's check for processes carrying its JUPYTER_RUNTIME_DIR see the sandbox's sshd."""
    host = net.hosts["unicorn"]
    for _ in range(10):
        net.stop_sshd("unicorn")
        net.start_sshd("unicorn")  # as test_hop_down does, with the test's environment
        for _ in range(5):
            socket.create_connection((host.address, host.port), timeout=5).close()
            left = processes_of(runtime_dir)
            assert left == [], describe(left)
    net.start_jupyter()  # and Jupyter on beast, restarted as test_no_jupyter_on_target does
    left = processes_of(runtime_dir)
    assert left == [], describe(left)


def _ours(cmd: list[str], prefix: str) -> list[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    return [line for line in out.splitlines() if prefix in line]


def _session_runs(sb: Sandbox, cmdline: bytes) -> bool:
    """Whether a process of a session of sb (MARKER in its environment) runs cmdline."""
    mark = f"{MARKER}={sb.dir}".encode()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes() == cmdline \
                    and mark in (proc / "environ").read_bytes().split(b"\0"):
                return True
        except OSError:
            continue
    return False


def test_stop_removes_everything() -> None:
    _need_ssh()
    sb = Sandbox().start()
    pids = [h._proc.pid for h in sb.hosts.values() if h._proc]
    assert sb.jupyter is not None
    pids.append(sb.jupyter.pid)
    # an open session must not keep anything alive
    session = subprocess.Popen(
        sb.ssh_argv("beast-via-unicorn", "sleep 300"),
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not _session_runs(sb, b"sleep\0" + b"300\0"):  # logged in, its command started
        assert session.poll() is None and time.monotonic() < deadline, "no session on beast"
        time.sleep(0.05)
    folder, route_added = sb.dir, sb.route_added
    t0 = time.monotonic()
    sb.stop()
    assert time.monotonic() - t0 < 10
    sb.stop()  # idempotent
    assert session.wait(15) == 255
    assert not folder.exists()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    if sb.netns:
        assert _ours(["ip", "netns", "list"], sb.prefix) == []
        assert _ours(["ip", "-o", "link"], sb.prefix) == []
        others = subprocess.run(
            ["ip", "-4", "-o", "addr", "show", "to", "10.213.0.0/16"],
            capture_output=True, text=True, check=False,
        ).stdout.strip()  # fmt: skip
        routes = subprocess.run(
            ["ip", "-4", "route", "show", "type", "unreachable"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
        if route_added and not others:  # another sandbox running keeps the route
            assert "10.213.0.0/16" not in routes
