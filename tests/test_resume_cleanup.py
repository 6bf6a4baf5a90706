"""`cleanup` ends the resume helper of a tunnel whose process was killed, on beast, proven
by pid, start time and command line there; a pid that now runs something else is never
signalled; an unreachable target is said quickly and cleanup goes on."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI, need
from resume_rig import PYTHONS, Helper, wait_for
from test_faults import assert_left_nothing

from jupyter_tunnel import procinfo
from jupyter_tunnel.registry import Registry
from jupyter_tunnel.resume import orphans, remote
from jupyter_tunnel.sandbox import Sandbox


# the remote program, run here as over SSH (no network) ------------------------------------
@pytest.fixture(params=PYTHONS)
def rig(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Helper]:
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    (tmp_path / "home").mkdir()
    h = Helper(request.param, tmp_path / "home", run_dir)
    yield h
    for answer in h.started:
        if not h.gone(answer):
            os.kill(answer["pid"], signal.SIGKILL)


def _orphan(rig: Helper, tunnel_id: str, pid: int, started: int, wait: float = 5.0
            ) -> dict[str, Any]:
    out = subprocess.run(["sh", "-c", remote.command(rig.python)],
                         input=orphans.request_input(tunnel_id, pid, started, wait),
                         capture_output=True, env=rig.env, timeout=60, check=False)
    assert out.stderr == b"" and out.returncode == 0, out
    return dict(json.loads(out.stdout))


def _files(rig: Helper, tunnel_id: str) -> list[str]:
    return sorted(p.name for p in rig.folder.glob(f"{tunnel_id}.*"))


def test_the_proven_helper_is_ended_with_its_files(rig: Helper) -> None:
    answer = rig.start("o1")
    assert _files(rig, "o1") == ["o1.json", "o1.sock"]
    said = _orphan(rig, "o1", answer["pid"], answer["started"])
    assert said == {"result": "ended", "detail": "ended by SIGTERM"}
    assert rig.gone(answer) and _files(rig, "o1") == []
    again = _orphan(rig, "o1", answer["pid"], answer["started"])
    assert again["result"] == "gone"


def test_a_pid_with_another_start_time_or_command_line_is_not_signalled(rig: Helper) -> None:
    answer = rig.start("o2")
    pid, started = answer["pid"], answer["started"]
    said = _orphan(rig, "o2", pid, started - 1)  # the pid reused by another process
    assert said == {"result": "reused",
                    "detail": f"started at tick {started}, the helper at {started - 1}"}
    assert _orphan(rig, "other", pid, started)["result"] == "unproven"  # no state file
    state_file = rig.folder / "o2.json"
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "cmdline": ["sleep", "300"]}))
    said = _orphan(rig, "o2", pid, started)
    assert said["result"] == "unproven" and "command line" in said["detail"]
    assert not rig.gone(answer) and _files(rig, "o2") == ["o2.json", "o2.sock"]
    state_file.write_text(json.dumps(state))
    assert _orphan(rig, "o2", pid, started)["result"] == "ended"


def test_a_helper_killed_before_leaves_no_files(rig: Helper) -> None:
    answer = rig.start("o3")
    os.kill(answer["pid"], signal.SIGKILL)
    wait_for(lambda: rig.gone(answer), 10, "the helper gone")
    said = _orphan(rig, "o3", answer["pid"], answer["started"])
    assert said == {"result": "gone", "detail": "it had died; its files are removed"}
    assert _files(rig, "o3") == []


def test_the_program_is_python_38_and_nothing_but_checked_input_reaches_it() -> None:
    ast.parse(orphans.program(), feature_version=(3, 8))
    assert "from ." not in orphans.program()
    for bad in ("", "a/b", "../x", "x" * 65, "a b", "-rf ~"):
        with pytest.raises(ValueError):
            orphans.request_input(bad, 1, 1, 1.0)
    bad_record = orphans.end_helper({"id": "../x", "pid": 3, "started": 1, "host": "beast",
                                     "hops": [{"host": "beast"}]})
    assert bad_record.result == "error" and "incomplete" in bad_record.message


# through the CLI, on the test network ------------------------------------------------------
@pytest.fixture
def started_helpers() -> Iterator[list[dict[str, Any]]]:
    """Helpers the test started on beast: a failed test must not leave one for 15 min."""
    helpers: list[dict[str, Any]] = []
    yield helpers
    for helper in helpers:
        if procinfo.is_alive(helper["pid"], helper["started"]):
            os.kill(helper["pid"], signal.SIGKILL)


def _open_and_kill(cli: CLI, backend: str, started_helpers: list[dict[str, Any]]
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """A detached resumable tunnel to beast through unicorn, its process SIGKILLed: its
    record (as opened) and its helper, still running on beast."""
    info = cli.json("open", "beast", "--via", "unicorn", "--detach", "--resume",
                    "--backend", backend)
    helper = (info.get("resume") or {}).get("helper")
    assert info["state"] == "ready" and helper, info
    started_helpers.append(helper)
    os.kill(info["pid"], signal.SIGKILL)
    wait_for(lambda: not procinfo.is_alive(info["pid"], info["started"]), 10,
             "the tunnel's process gone")
    assert procinfo.is_alive(helper["pid"], helper["started"])  # beast is this machine
    return info, helper


def _state_file(helper: dict[str, Any]) -> str:
    return str(helper["socket"])[: -len(".sock")] + ".json"


@pytest.mark.network
@pytest.mark.parametrize("backend", ["openssh", "sshtunnel"])
def test_cleanup_ends_the_helper_of_a_killed_tunnel(
        cli: CLI, runtime_dir: Path, backend: str,
        started_helpers: list[dict[str, Any]]) -> None:
    info, helper = _open_and_kill(cli, backend, started_helpers)
    assert os.path.exists(helper["socket"]) and os.path.exists(_state_file(helper))
    assert "orphaned" in cli.run("list").stdout
    result = cli.run("cleanup")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"removed beast: its cli process (pid {info['pid']}) is gone" in out, out
    assert f"ended pid {helper['pid']} (the resume helper on beast) of beast" in out, out
    assert "left alone" not in out, out
    for child in info["children"]:  # openssh: its master (which carried the cleanup's
        assert f"ended pid {child['pid']} (ssh " in out, out  # commands) and jump helper
    assert bool(info["children"]) == (backend == "openssh"), info
    assert not procinfo.is_alive(helper["pid"], helper["started"])
    assert not os.path.exists(helper["socket"]) and not os.path.exists(_state_file(helper))
    assert_left_nothing(runtime_dir, info["local_port"])
    assert cli.run("cleanup").stdout.strip() == "Nothing to clean up."


@pytest.mark.network
def test_a_helper_pid_that_runs_another_process_is_not_signalled(
        cli: CLI, net: Sandbox, runtime_dir: Path,
        started_helpers: list[dict[str, Any]]) -> None:
    _, helper = _open_and_kill(cli, "openssh", started_helpers)
    registry = Registry(runtime_dir / "jupyter_tunnel")
    record = registry.read("beast")
    assert record is not None
    # as if the helper had ended and its pid now ran another process (another start time)
    record["resume"]["helper"]["started"] = helper["started"] - 1
    registry.write(record)
    report = cli.json("cleanup")
    assert [r["name"] for r in report["removed"]] == ["beast"]
    assert not [e for e in report["ended"] if e["pid"] == helper["pid"]], report
    why = [item["why"] for item in report["left"] if item.get("pid") == helper["pid"]]
    assert why == [f"pid {helper['pid']} on beast now belongs to another process, not its "
                   f"resume helper (started at tick {helper['started']}, the helper at "
                   f"{helper['started'] - 1}); not signalled"], report
    assert procinfo.is_alive(helper["pid"], helper["started"])
    # the true record ends it, in process this time
    outcome = orphans.end_helper({**helper, "ssh_config": str(net.ssh_config)},
                                 backend="sshtunnel")
    assert outcome.ended, outcome
    assert outcome.message == f"ended the resume helper on beast (pid {helper['pid']})"
    assert not procinfo.is_alive(helper["pid"], helper["started"])
    assert not os.path.exists(helper["socket"]) and not os.path.exists(_state_file(helper))


@pytest.mark.network
@pytest.mark.parametrize("how", ["refused", "link down"])
def test_an_unreachable_target_is_said_quickly(cli: CLI, net: Sandbox, runtime_dir: Path,
                                               how: str) -> None:
    if how == "link down" and not net.netns:
        need("cutting the link needs the namespace network")
    registry = Registry(runtime_dir / "jupyter_tunnel")
    me = os.getpid()
    # refused: nothing listens on that port of beast; link down: unicorn cannot be reached
    port = net.hosts["beast"].port + (7 if how == "refused" else 0)
    registry.write({
        "name": "far", "state": "ready", "owner": "cli", "pid": me,
        "started": int(procinfo.start_time(me) or 0) - 1,  # another process: the owner died
        "resume": {"helper": {"id": "jt-0123456789abcdef", "pid": 4321, "started": 99,
                              "socket": "/nowhere/jt-0123456789abcdef.sock", "host": "beast",
                              "hops": [{"host": "unicorn", "user": None, "port": None},
                                       {"host": "beast", "user": None, "port": port}],
                              "ssh_config": str(net.ssh_config), "outage": 120.0}},
    })
    if how == "link down":
        net.cut_link()
    try:
        t0 = time.monotonic()
        result = cli.run("cleanup")
        elapsed = time.monotonic() - t0
    finally:
        if how == "link down":
            net.restore_link()
    assert result.returncode == 0, result.stderr
    assert "removed far: its cli process" in result.stdout, result.stdout
    assert "left alone: could not reach beast to end its resume helper (pid 4321; it ends " \
        "by itself within 2 min): " in result.stdout, result.stdout
    assert elapsed < 30, f"cleanup took {elapsed:.1f} s"
    assert registry.all() == []


_OWNER = """
import sys, time
from jupyter_tunnel import open_tunnel
from jupyter_tunnel.manager import TunnelManager
manager = TunnelManager(ssh_config=sys.argv[1], backend=sys.argv[2], reconnect_give_up=2.0,
                        reconnect_max_delay=0.5)
tunnel = open_tunnel("beast", via="unicorn", manager=manager)
print(tunnel.local_port, flush=True)
tunnel.wait()
print(tunnel.state.value, flush=True)
time.sleep(600)  # a Jupyter server or kernel that lives on after its tunnel failed
"""


@pytest.mark.network
@pytest.mark.parametrize("backend", ["openssh", "sshtunnel"])
def test_cleanup_ends_the_helper_of_a_failed_tunnel_whose_owner_died(
        cli: CLI, net: Sandbox, runtime_dir: Path, backend: str,
        started_helpers: list[dict[str, Any]]) -> None:
    """A tunnel that failed (it gave up reconnecting) could not end its helper through the
    lost connection: the record kept to say why names the helper, so that cleanup ends it
    once the owner is gone too."""
    owner = subprocess.Popen([sys.executable, "-c", _OWNER, str(net.ssh_config), backend],
                             text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert owner.stdout is not None
    try:
        port = int(owner.stdout.readline() or 0)
        assert port, owner.stderr.read() if owner.stderr else ""
        registry = Registry(runtime_dir / "jupyter_tunnel")
        record = registry.read("beast")
        helper = ((record or {}).get("resume") or {}).get("helper")
        assert helper, record
        started_helpers.append(helper)
        net.stop_sshd("unicorn")  # the jump host gone: the tunnel gives up after 2 s
        try:
            assert owner.stdout.readline().strip() == "failed"
        finally:
            net.start_sshd("unicorn")
        failed = registry.read("beast")
        assert failed is not None and failed["state"] == "failed", failed
        assert failed["resume"]["helper"] == helper, failed
        assert procinfo.is_alive(helper["pid"], helper["started"])  # still held on beast
    finally:
        owner.kill()
        owner.wait()
    result = cli.run("cleanup")
    assert result.returncode == 0, result.stderr
    assert f"ended pid {helper['pid']} (the resume helper on beast) of beast" in result.stdout, \
        result.stdout
    assert not procinfo.is_alive(helper["pid"], helper["started"])
    assert not os.path.exists(helper["socket"])
    assert_left_nothing(runtime_dir, port)
