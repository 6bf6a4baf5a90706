"""Starting the resume helper on beast through the tunnel's own connection (both backends),
with the Python that runs beast's Jupyter; what is said when that cannot be done."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from resume_rig import SECRET, control, frames_until_close, wait_for

from jupyter_tunnel import procinfo
from jupyter_tunnel.backends import Backend, make_backend
from jupyter_tunnel.backends.openssh_files import control_dir
from jupyter_tunnel.errors import ForwardingRefused
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


def test_a_command_that_ends_before_reading_its_input_is_no_lost_hop(
        backend: Backend) -> None:
    """A command that exits at once (a Python not found) while its input is still being
    sent: its exit status and words, not "lost beast while running a command" (a loaded
    CI run met it with the in-process backend: the channel closed under the send)."""
    big = "x" * (8 << 20)  # past the channel's window: the send meets the closed channel
    for _ in range(3):
        status, out, err = backend.run("echo gone >&2; exit 3", 30.0, big)
        assert (status, out, err.strip()) == (3, "", "gone")
    assert backend.run("echo still here", 30.0)[:2] == (0, "still here\n")


def test_a_python_that_cannot_start_it_is_said_once(backend: Backend) -> None:
    with pytest.raises(launch.ResumeUnavailable) as caught:
        launch.start_helper(backend.run, "beast", "/nonexistent/python3", _settings("launch2"))
    text = str(caught.value)
    assert "resume helper gave no answer on beast" in text
    assert "/nonexistent/python3: No such file or directory" in text  # the shell's words
    assert SECRET not in text


def _control_over(link: socket.socket) -> None:
    link.settimeout(20)
    link.sendall(Hello(VERSION, Mode.NEW, 0, 0, SECRET.encode(), remote.CONTROL_TARGET).encode())
    assert FrameDecoder().feed(link.recv(100)) == [Welcome(0)]


def _link_files(backend: Backend) -> list[str]:
    folder = control_dir(create=False)
    return sorted(p.name for p in folder.glob("*.link-*")) if folder.is_dir() else []


def test_the_helper_is_reached_through_the_hops(backend: Backend, net: Sandbox) -> None:
    python = launch.find_python(backend.run, "beast", None)
    info = launch.start_helper(backend.run, "beast", python, _settings("launch3"))
    try:
        with backend.unix_link(info.socket) as link:
            _control_over(link)
        # after a reconnect (a new master, new hop connections) links still come
        backend.disconnect()
        hops = resolve_chain(Hop("beast"), (Hop("unicorn"),), SSHConfig(net.ssh_config))
        backend.connect(hops, timeout=20.0)
        with backend.unix_link(info.socket) as link, backend.unix_link(info.socket) as second:
            _control_over(link)
            _control_over(second)
            link.sendall(Reset(Code.SHUTDOWN).encode())
            wait_for(lambda: not procinfo.is_alive(info.pid, info.started), timeout=10,
                     what="the helper gone after SHUTDOWN through the hops")
    finally:
        if procinfo.is_alive(info.pid, info.started):
            _stop(info)
    backend.close()
    assert _link_files(backend) == []  # no socket file of a forward is left


def test_a_link_to_a_missing_socket_ends_at_once(backend: Backend, tmp_path: Path) -> None:
    try:
        link = backend.unix_link(str(tmp_path / "none.sock"))
    except ForwardingRefused as exc:  # in process: the channel is refused
        assert "refused to connect to" in str(exc)
        return
    with link:  # openssh: the master accepts locally, then its channel is refused
        link.settimeout(10)
        assert link.recv(100) == b""


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



def test_a_tunnel_leaving_a_shared_master_cancels_only_its_own_forward(net: Sandbox) -> None:
    hops = resolve_chain(Hop("beast"), (Hop("unicorn"),), SSHConfig(net.ssh_config))
    first, second = make_backend("openssh"), make_backend("openssh")
    first.connect(hops, timeout=20.0)
    second.connect(hops, timeout=20.0)  # the same master, no new login
    info = None
    try:
        python = launch.find_python(first.run, "beast", None)
        info = launch.start_helper(first.run, "beast", python, _settings("launch4"))
        with first.unix_link(info.socket) as a, second.unix_link(info.socket) as b:
            _control_over(a)
            _control_over(b)
        assert len(_link_files(first)) == 2  # one forward each, on the master
        first.close()
        assert len(_link_files(second)) == 1  # cancelled and removed: the first's only
        with second.unix_link(info.socket) as b:
            _control_over(b)
    finally:
        if info is not None and procinfo.is_alive(info.pid, info.started):
            _stop(info)
        first.close()
        second.close()
    assert _link_files(second) == []
