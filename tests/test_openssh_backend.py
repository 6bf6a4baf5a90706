"""What is particular to the OpenSSH backend: one login shared by tunnels to the same
hosts, no ssh process left after a close or a cleanup, ssh's words turned into typed
errors, and nothing from input read by ssh as an option."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import time
import urllib.parse
from pathlib import Path

import pytest
from conftest import CLI, free_port, need, port_is_free
from test_faults import assert_left_nothing, processes_of
from test_open import api_status

from jupyter_tunnel import procinfo
from jupyter_tunnel.backends import openssh_files as of
from jupyter_tunnel.backends import openssh_master as om
from jupyter_tunnel.backends.openssh_errors import LoginTrace, loss
from jupyter_tunnel.errors import (
    AuthError,
    ForwardingRefused,
    HopTimeout,
    HopUnreachable,
    HostKeyError,
    RemotePortRefused,
    SpecError,
)
from jupyter_tunnel.manager import TunnelManager
from jupyter_tunnel.sandbox import Sandbox
from jupyter_tunnel.spec import build_spec
from jupyter_tunnel.sshconfig import ResolvedHop

OPENSSH = "--TunnelManager.backend=openssh"


@pytest.fixture
def ssh_client() -> None:
    if shutil.which("ssh") is None:
        need("the OpenSSH client (apt-get install -y openssh-client)")


def logins(net: Sandbox, host: str) -> int:
    """Logins that host's sshd accepted so far."""
    log = net.dir / host / "sshd.log"
    return log.read_text(errors="replace").count("Accepted publickey")


@pytest.mark.network
def test_second_tunnel_reuses_the_master_without_a_new_login(
        net: Sandbox, runtime_dir: Path, ssh_client: None) -> None:
    manager = TunnelManager(ssh_config=str(net.ssh_config), backend="openssh")
    first = manager.open(build_spec("beast via unicorn", name="first"))
    try:
        assert first.url is not None and api_status(first.url) == 200
        children = first.to_dict()["children"]
        assert [c["cmdline"][0] for c in children] == ["ssh", "ssh"]  # the master, the jump
        master = children[0]
        assert "-M" in master["cmdline"] and "-J" in master["cmdline"]
        folder = Path(master["cmdline"][master["cmdline"].index("-S") + 1]).parent
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        before = (logins(net, "unicorn"), logins(net, "beast"))
        # another process, another tunnel to the same hosts: it uses the same master
        cli = CLI(net.ssh_config)
        second = cli.run("open", "beast", "--via", "unicorn", "--detach", "--name", "second",
                         "--json", OPENSSH)
        assert second.returncode == 0, second.stderr
        info = json.loads(second.stdout)
        assert api_status(info["url"]) == 200
        assert info["children"] == []  # it started no ssh process
        assert (logins(net, "unicorn"), logins(net, "beast")) == before
        # the first tunnel closes: the master stays for the second one
        first.close()
        assert procinfo.is_same(master["pid"], master["started"], master["cmdline"])
        assert api_status(info["url"]) == 200
        assert cli.run("close", "second").returncode == 0
    finally:
        first.close()
    # the last one out ends it: no ssh process is left
    assert not procinfo.is_alive(master["pid"], master["started"])
    assert processes_of(runtime_dir) == []


@pytest.mark.network
def test_close_leaves_no_ssh_process(net: Sandbox, runtime_dir: Path,
                                     ssh_client: None) -> None:
    cli = CLI(net.ssh_config)
    info = json.loads(cli.run("open", "beast", "--via", "unicorn", "--detach", "--json",
                              OPENSSH).stdout)
    children = info["children"]
    assert len(children) == 2 and all(procinfo.is_same(c["pid"], c["started"], c["cmdline"])
                                      for c in children)
    assert cli.run("close", info["name"]).returncode == 0
    assert not any(procinfo.is_alive(c["pid"], c["started"]) for c in children)
    assert_left_nothing(runtime_dir, info["local_port"])
    assert not of.control_dir(create=False).exists()  # its socket, lock, log: all gone


@pytest.mark.network
def test_cleanup_ends_the_ssh_processes_of_a_killed_owner(
        net: Sandbox, runtime_dir: Path, ssh_client: None) -> None:
    cli = CLI(net.ssh_config)
    info = json.loads(cli.run("open", "beast", "--via", "unicorn", "--detach", "--json",
                              OPENSSH).stdout)
    children = info["children"]
    os.kill(info["pid"], signal.SIGKILL)
    while procinfo.is_alive(info["pid"], info["started"]):
        time.sleep(0.05)
    # the master outlives its owner for a while (ControlPersist): cleanup ends it now,
    # proven the very process recorded by pid, start time and command line
    assert all(procinfo.is_same(c["pid"], c["started"], c["cmdline"]) for c in children)
    report = cli.json("cleanup")
    assert children[0]["pid"] in {e["pid"] for e in report["ended"]}  # the master (its
    # ProxyJump helper ends with it, or is ended next)
    assert not any(procinfo.is_alive(c["pid"], c["started"]) for c in children)
    assert_left_nothing(runtime_dir, info["local_port"])


@pytest.mark.network
def test_killed_master_is_replaced_on_the_same_port(net: Sandbox, runtime_dir: Path,
                                                    ssh_client: None) -> None:
    manager = TunnelManager(ssh_config=str(net.ssh_config), backend="openssh",
                            keepalive_interval=1, keepalive_count_max=2)
    with manager.open(build_spec("beast via unicorn")) as tunnel:
        url = tunnel.url
        assert url is not None
        master = tunnel.to_dict()["children"][0]
        os.kill(master["pid"], signal.SIGKILL)
        # a connection made meanwhile waits for the new master instead of being refused
        assert api_status(url) == 200
        deadline = time.monotonic() + 15
        while tunnel.reconnects != 1 or tunnel.state.value != "ready":
            assert time.monotonic() < deadline, "no reconnect"
            time.sleep(0.1)
        assert tunnel.url == url and api_status(url) == 200
        assert tunnel.to_dict()["children"][0]["pid"] != master["pid"]
    port = urllib.parse.urlsplit(url).port
    assert port is not None
    assert processes_of(runtime_dir) == []


@pytest.mark.network
def test_cleanup_keeps_a_master_another_process_still_uses(
        net: Sandbox, runtime_dir: Path, ssh_client: None) -> None:
    cli = CLI(net.ssh_config)
    info = json.loads(cli.run("open", "beast", "--via", "unicorn", "--detach", "--json",
                              OPENSSH).stdout)
    master = info["children"][0]
    manager = TunnelManager(ssh_config=str(net.ssh_config), backend="openssh")
    with manager.open(build_spec("beast via unicorn", name="user")) as tunnel:
        assert tunnel.url is not None and tunnel.to_dict()["children"] == []  # it reused it
        os.kill(info["pid"], signal.SIGKILL)  # the master's starter dies
        while procinfo.is_alive(info["pid"], info["started"]):
            time.sleep(0.05)
        report = cli.json("cleanup")
        assert info["name"] in {r["name"] for r in report["removed"]}
        assert master["pid"] not in {e["pid"] for e in report["ended"]}
        kept = [x for x in report["left"] if x.get("pid") == master["pid"]]
        assert kept and f"shared with the tunnels of process(es) {os.getpid()}" in \
            kept[0]["why"]
        time.sleep(om.PERSIST / 2)
        assert procinfo.is_same(master["pid"], master["started"], master["cmdline"])
        assert api_status(tunnel.url) == 200
    # the last user ends it; its jump helper (a child of the master) ends a moment later,
    # when its pipes close (a loaded clean-clone run still saw it here at once)
    assert not procinfo.is_alive(master["pid"], master["started"])
    deadline = time.monotonic() + 10
    while processes_of(runtime_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_of(runtime_dir) == []


@pytest.mark.network
def test_forwards_and_multiplexing_of_the_users_config_are_not_started(
        net: Sandbox, runtime_dir: Path, tmp_path: Path, ssh_client: None) -> None:
    socks = free_port()
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host *\n  DynamicForward 127.0.0.1:{socks}\n  ControlMaster auto\n"
        f"  ControlPath {tmp_path}/cm-%C\n  ControlPersist 60\n"
        f"Include {net.ssh_config}\n")
    manager = TunnelManager(ssh_config=str(config), backend="openssh")
    with manager.open(build_spec("beast via unicorn")) as tunnel:
        assert tunnel.url is not None and api_status(tunnel.url) == 200
        assert port_is_free(socks)  # no SOCKS proxy opened for the user's DynamicForward
        assert not list(tmp_path.glob("cm-*"))  # the jump helper started no master of its own
    assert processes_of(runtime_dir) == []


@pytest.mark.network
def test_a_remote_port_of_another_tunnel_on_the_same_master_is_refused(
        net: Sandbox, runtime_dir: Path, ssh_client: None) -> None:
    port = free_port()
    # ssh -R through the shared master (resumable reverse forwards are the helper's own)
    manager = TunnelManager(ssh_config=str(net.ssh_config), backend="openssh", resume=False)
    spec = f"{port + 1}:127.0.0.1:{port}"
    first = manager.open(build_spec("beast via unicorn", name="first", jupyter=False,
                                    reverse=[spec]))
    try:
        with pytest.raises(RemotePortRefused, match=rf"already listens on 127.0.0.1:"
                           rf"{port + 1} for another tunnel \(process {os.getpid()}\)"):
            manager.open(build_spec("beast via unicorn", name="second", jupyter=False,
                                    reverse=[spec]))
    finally:
        first.close()
    assert processes_of(runtime_dir) == []


def test_a_command_never_connects_without_the_master(tmp_path: Path) -> None:
    """With its master gone, a command fails as unreachable: ssh must not log in anew on
    its own (directly, past the jump hosts and the user's config)."""
    from jupyter_tunnel.backends.openssh_backend import OpenSSHBackend, _Master

    chain = [hop("127.0.0.1", port=9)]  # nothing listens: a direct try would be refused
    backend = OpenSSHBackend()
    try:
        files = of.MasterFiles(tmp_path, "k")
        backend._master = _Master(files, chain, 1, None, {})
        with pytest.raises(HopUnreachable):
            backend.run("true", timeout=10)
    finally:
        backend._master = None
        backend.close()


# ssh's argv --------------------------------------------------------------------------

def hop(alias: str, user: str = "alice", port: int = 22) -> ResolvedHop:
    return ResolvedHop(alias=alias, hostname=f"{alias}.example", port=port, user=user)


def test_destination_puts_names_where_no_option_can_be() -> None:
    argv = om.destination([hop("gate", port=2222), hop("fe80::1"), hop("beast", "bob")])
    assert argv == ["-J", "alice@gate:2222,alice@[fe80::1]:22", "-l", "bob", "-p", "22", "--",
                    "beast"]


@pytest.mark.parametrize("bad", [hop("-oProxyCommand=touch /tmp/x"), hop("a b"),
                                 hop("beast", "-oProxyCommand=x"), hop("a,b")])
def test_hostile_names_never_reach_ssh(bad: ResolvedHop) -> None:
    with pytest.raises(SpecError):
        om.destination([hop("gate"), bad])
    with pytest.raises(SpecError):
        om.destination([bad])


# ssh's words -> typed errors ------------------------------------------------------------

CHAIN = [ResolvedHop("unicorn", "10.0.0.1", 22, "root", known_hosts_files=("/kh",)),
         ResolvedHop("beast", "10.0.0.2", 22, "root", known_hosts_files=("/kh",),
                     config_file="/cfg")]
JUMP_OK = ["debug1: Connecting to 10.0.0.1 [10.0.0.1] port 22.",
           "debug1: Authenticating to 10.0.0.1:22 as 'root'",
           "debug1: Server host key: ssh-ed25519 SHA256:AAAA",
           'Authenticated to 10.0.0.1 ([10.0.0.1]:22) using "publickey".',
           "debug1: Authenticating to 10.0.0.2:22 as 'root'",
           "debug1: Server host key: ssh-ed25519 SHA256:BBBB"]


def trace(lines: list[str]) -> LoginTrace:
    result = LoginTrace(CHAIN)
    for line in lines:
        result.feed(line)
    return result


@pytest.mark.parametrize(("lines", "kind", "hop_name", "words"), [
    (["debug1: Connecting to 10.0.0.1 [10.0.0.1] port 22.",
      "ssh: connect to host 10.0.0.1 port 22: Connection refused",
      "kex_exchange_identification: Connection closed by remote host"],
     HopUnreachable, "unicorn", ["unicorn (10.0.0.1:22) refused the connection"]),
    (["ssh: connect to host 10.0.0.1 port 22: Connection timed out"], HopTimeout, "unicorn",
     ["did not answer within 7 s"]),
    (["ssh: Could not resolve hostname 10.0.0.1: Name or service not known"],
     HopUnreachable, "unicorn", ["cannot resolve unicorn"]),
    (["Connection timed out during banner exchange"], HopTimeout, "unicorn",
     ["did not complete the SSH handshake within 7 s"]),
    ([*JUMP_OK[:4], "channel 0: open failed: connect failed: Connection refused",
      "stdio forwarding failed"], HopUnreachable, "beast",
     ["unicorn could not connect to beast (10.0.0.2:22): Connection refused"]),
    ([*JUMP_OK[:4], "channel 0: open failed: administratively prohibited: open failed"],
     ForwardingRefused, "unicorn", ["does not allow TCP forwarding"]),
    ([*JUMP_OK, "No ED25519 host key is known for 10.0.0.2 and you have requested strict "
      "checking.", "Host key verification failed."], HostKeyError, "beast",
     ["host key for beast (10.0.0.2:22) is not known: ssh-ed25519 SHA256:BBBB",
      "ssh -F /cfg beast"]),
    ([*JUMP_OK, "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @",
      "Host key verification failed."], HostKeyError, "beast",
     ["has CHANGED", "SHA256:BBBB", "ssh-keygen -R '10.0.0.2' -f /kh"]),
    (["debug1: Authenticating to 10.0.0.1:22 as 'root'",
      "debug1: Offering public key: /home/a/.ssh/id_ed25519 ED25519 SHA256:CCCC explicit",
      "root@10.0.0.1: Permission denied (publickey)."], AuthError, "unicorn",
     ["unicorn (10.0.0.1:22) refused to log in root: tried /home/a/.ssh/id_ed25519"]),
])
def test_login_failures_name_the_hop(lines: list[str], kind: type, hop_name: str,
                                     words: list[str]) -> None:
    error = trace(lines).error(255, 7)
    assert type(error) is kind
    assert error.hop == hop_name
    for word in words:
        assert word in error.message


def test_progress_and_accept_new_notice() -> None:
    result = LoginTrace(CHAIN)
    progress = [result.feed(line) for line in JUMP_OK]
    assert [p for p in progress if p is not None] == [1]  # unicorn done: beast next
    result.feed("Warning: Permanently added '10.0.0.2' (ED25519) to the list of known hosts.")
    assert result.notices == ["Permanently added the ssh-ed25519 host key of beast "
                              "(10.0.0.2:22) (SHA256:BBBB) to /kh"]


def test_loss_names_the_hop_and_the_keepalives() -> None:
    keepalive = {"unicorn": (1, 2), "beast": (15, 3)}
    assert loss(["Timeout, server 10.0.0.1 not responding."], CHAIN, keepalive) == (
        CHAIN[0], "unicorn (10.0.0.1:22) stopped answering: 2 keepalive(s) sent 1 s apart "
        "got no reply", True)
    assert loss(["Connection closed by UNKNOWN port 65535",
                 "Connection to 10.0.0.1 closed by remote host."], CHAIN, keepalive) == (
        CHAIN[0], "the connection to unicorn (10.0.0.1:22) was closed", False)
    assert loss(["client_loop: send disconnect: Broken pipe"], CHAIN, keepalive) is None
