"""A shared OpenSSH master belongs to no tunnel: stopping or ending the process that
started it never holds up the other tunnels that use it, cleanup takes its lock, and
nothing of it is left once it ended."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLI, foreground
from test_faults import assert_left_nothing
from test_open import api_status
from test_openssh_backend import OPENSSH, ssh_client  # noqa: F401 - a fixture

from jupyter_tunnel import procinfo
from jupyter_tunnel.backends import openssh_files as of
from jupyter_tunnel.backends import openssh_master as om
from jupyter_tunnel.errors import HopTimeout
from jupyter_tunnel.manager import TunnelManager
from jupyter_tunnel.sandbox import Sandbox
from jupyter_tunnel.spec import build_spec


def _get(url: str, path: str, timeout: float = 20.0) -> bytes:
    """GET ``path`` through the tunnel of ``url`` on a new connection; the body."""
    parts = urllib.parse.urlsplit(url)
    token = urllib.parse.parse_qs(parts.query)["token"][0]
    base = parts.path.rsplit("lab", 1)[0]
    conn = http.client.HTTPConnection("127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request("GET", f"{base}{path}", headers={"Authorization": f"token {token}"})
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (path, response.status)
        return body
    finally:
        conn.close()


@pytest.fixture
def big_file(net: Sandbox) -> Iterator[tuple[str, str]]:
    """A 64 MiB file in the root folder of beast's Jupyter: (name, sha256)."""
    data = os.urandom(64 << 20)
    path = net.home("beast") / "jt-big.bin"
    path.write_bytes(data)
    try:
        yield path.name, hashlib.sha256(data).hexdigest()
    finally:
        path.unlink()


def _serves(url: str, big: tuple[str, str]) -> None:
    """The tunnel of ``url`` carries a 64 MiB download and 500 new connections at full
    speed: no request waits for a stopped process (each has 20 s)."""
    name, digest = big
    assert hashlib.sha256(_get(url, f"files/{name}", timeout=60)).hexdigest() == digest
    for _ in range(500):
        assert json.loads(_get(url, "api/status"))["started"]


def _master_of(info: dict[str, object]) -> dict[str, object]:
    children = info["children"]
    assert isinstance(children, list) and len(children) == 2, children
    return dict(children[0])


def _answers_within(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            assert api_status(url) == 200
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.network
@pytest.mark.usefixtures("ssh_client")
@pytest.mark.parametrize("stopped", ["starter", "other"])
def test_a_stopped_process_does_not_hold_up_the_other_tunnel(
        net: Sandbox, runtime_dir: Path, big_file: tuple[str, str],
        stopped: str) -> None:
    cli = CLI(net.ssh_config)
    with foreground([*cli.argv("open", "beast", "--via", "unicorn", "--name", "fg", OPENSSH)]
                    ) as (fg, fg_url):
        other = cli.json("open", "beast", "--via", "unicorn", "--detach", "--name", "bg",
                         OPENSSH)
        assert other["children"] == []  # it uses the master the foreground one started
        victim, url = (fg.pid, other["url"]) if stopped == "starter" else \
            (other["pid"], fg_url)
        os.kill(victim, signal.SIGSTOP)  # Ctrl-Z
        try:
            _serves(url, big_file)
        finally:
            os.kill(victim, signal.SIGCONT)
        _answers_within(fg_url, 5)
        _answers_within(other["url"], 5)
        assert cli.run("close", "bg").returncode == 0
        fg.send_signal(signal.SIGINT)
        assert fg.wait(15) == 0
    assert_left_nothing(runtime_dir)
    assert not of.control_dir(create=False).exists()


@pytest.mark.network
@pytest.mark.usefixtures("ssh_client")
def test_the_starter_leaving_does_not_end_the_other_tunnel(
        net: Sandbox, runtime_dir: Path, big_file: tuple[str, str]) -> None:
    cli = CLI(net.ssh_config)
    with foreground([*cli.argv("open", "beast", "--via", "unicorn", "--name", "fg", OPENSSH)]
                    ) as (fg, _):
        other = cli.json("open", "beast", "--via", "unicorn", "--detach", "--name", "bg",
                         OPENSSH)
        fg.send_signal(signal.SIGINT)
        assert fg.wait(15) == 0
    _serves(other["url"], big_file)
    assert cli.run("close", "bg").returncode == 0
    assert_left_nothing(runtime_dir)
    assert not of.control_dir(create=False).exists()


@pytest.mark.network
@pytest.mark.usefixtures("ssh_client")
def test_cleanup_takes_the_masters_lock(net: Sandbox, runtime_dir: Path) -> None:
    """cleanup reads a master's users under its lock: a tunnel attaching meanwhile (it
    holds the lock while it checks the master and registers) is seen, and its master
    kept."""
    cli = CLI(net.ssh_config)
    info = cli.json("open", "beast", "--via", "unicorn", "--detach", OPENSSH)
    master = _master_of(info)
    files = of.MasterFiles.of_users(Path(str(master["shared"])))
    os.kill(info["pid"], signal.SIGKILL)
    while procinfo.is_alive(info["pid"], info["started"]):
        time.sleep(0.05)
    pid, started = procinfo.self_identity()
    me = f"{pid}-{started}-test"
    done = threading.Event()
    with files.locked(timeout=10):
        cleanup = subprocess.Popen(cli.argv("cleanup", "--json"), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        threading.Thread(target=lambda: (cleanup.wait(), done.set()), daemon=True).start()
        # cleanup waits for the lock (it would end the master at once without it) ...
        assert not done.wait(3), cleanup.communicate()
        files.register(me)  # ... while this process attaches to the master
    out, err = cleanup.communicate(timeout=60)
    assert cleanup.returncode == 0, err
    report = json.loads(out)
    kept = [x for x in report["left"] if x.get("pid") == master["pid"]]
    assert kept and f"shared with the tunnels of process(es) {pid}" in kept[0]["why"]
    assert procinfo.is_same(int(str(master["pid"])), int(str(master["started"])),
                            list(master["cmdline"]))  # type: ignore[call-overload]
    # once this process leaves (it held no control connection), the master ends by itself
    # (ControlPersist), and the next cleanup removes its files
    with files.locked(timeout=10):
        files.unregister(me)
    deadline = time.monotonic() + om.PERSIST + 10
    while procinfo.is_alive(int(str(master["pid"])), int(str(master["started"]))):
        assert time.monotonic() < deadline, "the master outlived ControlPersist"
        time.sleep(0.1)
    assert of.control_dir(create=False).exists()
    assert cli.run("cleanup").returncode == 0
    assert_left_nothing(runtime_dir)
    assert not of.control_dir(create=False).exists()


def test_the_masters_log_is_cut_back_while_ssh_writes_on(tmp_path: Path) -> None:
    files = of.MasterFiles(of.secure_dir(tmp_path / "ctl"), "k")
    fd, start = files.open_log()  # as ssh gets it: appending
    assert start == 0
    try:
        os.write(fd, b"x" * 100 + b"\nConnection to unicorn closed by remote host.\n")
        assert not files.trim_log(limit=1000)  # small: left as it is
        os.write(fd, b"debug1: channel 7: free\n" * 100_000)
        assert files.trim_log(limit=1000)
        assert files.log.stat().st_size == 0
        assert 0 < files.old_log.stat().st_size <= of.LOG_KEEP
        assert files.old_log.read_text().startswith("debug1: channel 7: free\n")
        os.write(fd, b"Timeout, server beast not responding.\n")
        assert files.log.read_bytes() == b"Timeout, server beast not responding.\n"
        assert files.log_tail() == ["Timeout, server beast not responding."]
    finally:
        os.close(fd)
    assert oct(files.log.stat().st_mode & 0o777) == oct(0o600)
    # the next master's lines follow; the last words of this one stay readable
    fd, start = files.open_log()
    os.close(fd)
    assert start == files.log.stat().st_size > 0
    assert files.log_tail() == ["Timeout, server beast not responding."]
    with files.locked():
        files.forget()
    assert not files.folder.exists()


def test_a_waiter_on_a_removed_lock_takes_a_new_one(tmp_path: Path) -> None:
    folder = tmp_path / "ctl"
    files = of.MasterFiles(of.secure_dir(folder), "k")
    got, release = threading.Event(), threading.Event()

    def waiter() -> None:
        with of.MasterFiles(folder, "k").locked(timeout=10):
            got.set()
            release.wait(10)

    with files.locked():
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.3)  # it waits on the lock file
        assert not got.is_set()
        files.forget()  # the holder removes the lock file and, now empty, the folder
        assert not folder.exists()
    assert got.wait(10)  # the waiter made a new lock file (and folder), and holds it
    assert files.lock.exists()
    with pytest.raises(HopTimeout), files.locked(timeout=0.3):  # never two holders
        pass
    release.set()
    thread.join(10)
    with files.locked(timeout=1):
        pass


@pytest.mark.network
@pytest.mark.usefixtures("ssh_client")
def test_a_tunnel_that_did_not_start_the_master_names_the_hop_lost(
        net: Sandbox, runtime_dir: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    cfg.write_text(net.ssh_config.read_text().replace(
        "Host unicorn\n", "Host unicorn\n  ServerAliveInterval 1\n  ServerAliveCountMax 2\n"))
    cli = CLI(cfg)
    cli.json("open", "beast", "--via", "unicorn", "--detach", "--name", "starter", OPENSSH)
    manager = TunnelManager(ssh_config=str(cfg), backend="openssh")
    problems: list[str] = []
    try:
        with manager.open(build_spec("beast via unicorn", name="user")) as tunnel:
            assert tunnel.to_dict()["children"] == []  # it uses the starter's master
            tunnel.on_event(lambda t, event: problems.append(t.problem or "")
                            if t.state.value == "reconnecting" else None)
            net.pause_sessions("unicorn")  # no FIN, no RST: only keepalives can tell
            try:
                deadline = time.monotonic() + 20
                while not problems:
                    assert time.monotonic() < deadline, "the outage was not noticed"
                    time.sleep(0.1)
            finally:
                net.resume_sessions("unicorn")
    finally:
        assert cli.run("close", "starter").returncode == 0
    assert "unicorn (" in problems[0] and "stopped answering" in problems[0], problems
    assert_left_nothing(runtime_dir)
