"""Starting the resume helper on beast through the tunnel's own connection (both backends),
with the Python that runs beast's Jupyter; what is said when that cannot be done."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from resume_rig import SECRET, control, frames_until_close, wait_for

from jupyter_tunnel import procinfo
from jupyter_tunnel.backends import Backend, make_backend
from jupyter_tunnel.resume import launch, remote
from jupyter_tunnel.resume.frames import VERSION, Code, FrameDecoder, Hello, Mode, Reset, Welcome
from jupyter_tunnel.sandbox import Sandbox
from jupyter_tunnel.spec import Hop
from jupyter_tunnel.sshconfig import SSHConfig, resolve_chain


@pytest.fixture(params=["openssh", "sshtunnel"])
def backend(request: pytest.FixtureRequest, net: Sandbox) -> Iterator[Backend]:
    hops = resolve_chain(Hop("beast"), (Hop("unicorn"),), SSHConfig(net.ssh_config))
    chosen = make_backend(request.param)
    chosen.connect(hops, timeout=20.0)
    yield chosen
    chosen.close()


@pytest.fixture
def jupyter_pid(net: Sandbox) -> int:
    if net.jupyter is None:
        net.start_jupyter()
    assert net.jupyter is not None
    return net.jupyter.pid


def _settings(tunnel_id: str) -> remote.HelperSettings:
    return remote.HelperSettings(tunnel_id, SECRET, stream_limit=2**20, tunnel_limit=2**24,
                                 outage=60.0, keepalive=0)


def _stop(info: launch.HelperInfo) -> None:
    with control(info.socket) as sock:
        sock.sendall(Reset(Code.SHUTDOWN).encode())
        frames_until_close(sock)
    wait_for(lambda: not procinfo.is_alive(info.pid, info.started), timeout=10,
             what="the helper gone")


def test_the_helper_runs_with_the_python_of_the_remote_jupyter(
        backend: Backend, jupyter_pid: int) -> None:
    python = launch.find_python(backend.run, "beast", jupyter_pid)
    assert python == os.readlink(f"/proc/{jupyter_pid}/exe")
    info = launch.start_helper(backend.run, "beast", python, _settings("launch1"))
    try:
        assert not info.existing and procinfo.is_alive(info.pid, info.started)
        assert os.readlink(f"/proc/{info.pid}/exe") == python
        assert SECRET not in " ".join(procinfo.cmdline(info.pid) or [])
        again = launch.start_helper(backend.run, "beast", python, _settings("launch1"))
        assert again.existing and (again.pid, again.socket) == (info.pid, info.socket)
    finally:
        _stop(info)
    assert not os.path.exists(info.socket)


def test_without_a_jupyter_pid_python3_on_the_path_is_used(backend: Backend) -> None:
    for pid in (None, 1):  # none known; a process that is no python
        python = launch.find_python(backend.run, "beast", pid)
        assert os.path.basename(python).startswith("python3") and os.access(python, os.X_OK)


def test_a_python_that_cannot_start_it_is_said_once(backend: Backend) -> None:
    with pytest.raises(launch.ResumeUnavailable) as caught:
        launch.start_helper(backend.run, "beast", "/nonexistent/python3", _settings("launch2"))
    text = str(caught.value)
    assert "resume helper gave no answer on beast" in text
    assert "/nonexistent/python3: No such file or directory" in text  # the shell's words
    assert SECRET not in text


def test_the_helper_is_reached_through_the_hops(net: Sandbox) -> None:
    from jupyter_tunnel.backends.sshtunnel_backend import SSHTunnelBackend
    from jupyter_tunnel.backends.streamlocal import open_streamlocal

    hops = resolve_chain(Hop("beast"), (Hop("unicorn"),), SSHConfig(net.ssh_config))
    backend = SSHTunnelBackend()
    backend.connect(hops, timeout=20.0)
    info = None
    try:
        python = launch.find_python(backend.run, "beast", None)
        info = launch.start_helper(backend.run, "beast", python, _settings("launch3"))
        assert backend.chain is not None
        chan: Any = open_streamlocal(backend.chain.transports[-1], info.socket)
        chan.settimeout(20)
        chan.sendall(Hello(VERSION, Mode.NEW, 0, 0, SECRET.encode(),
                           remote.CONTROL_TARGET).encode())
        assert FrameDecoder().feed(chan.recv(100)) == [Welcome(0)]
        chan.sendall(Reset(Code.SHUTDOWN).encode())
        wait_for(lambda: not procinfo.is_alive(info.pid, info.started), timeout=10,
                 what="the helper gone after SHUTDOWN through the hops")
        chan.close()
    finally:
        if info is not None and procinfo.is_alive(info.pid, info.started):
            _stop(info)
        backend.close()


@pytest.mark.parametrize(("status", "out", "words"), [
    (2, "", "the Python on beast is older than 3.8"),
    (3, "", "no python3 found on beast"),
    (0, "python3; rm -rf ~\n", "no python3 found on beast"),  # not a plain path: refused
])
def test_what_the_search_answers_is_checked(status: int, out: str, words: str) -> None:
    def run(command: str, timeout: float, stdin: str | None) -> tuple[int, str, str]:
        assert command == "sh -s 42" and stdin == launch.FIND_PYTHON_SCRIPT
        return status, out, ""

    with pytest.raises(launch.ResumeUnavailable, match=words):
        launch.find_python(run, "beast", 42)


def test_a_pid_must_be_a_number() -> None:
    with pytest.raises(ValueError):
        launch.find_python(lambda *a: (0, "", ""), "beast", "1; reboot")  # type: ignore[arg-type]

