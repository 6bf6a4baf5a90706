"""Orphans: a killed owner leaves nothing behind after `jupyter tunnel cleanup`; a process
that merely reuses a pid is never signalled; the registry holds under concurrent use."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import CLI, free_port
from test_faults import assert_left_nothing
from test_open import api_status, registry_files

from jupyter_tunnel import procinfo
from jupyter_tunnel.registry import Registry


@pytest.mark.network
def test_killed_owner_is_orphaned_then_cleaned_up(cli: CLI, runtime_dir: Path) -> None:
    port = free_port()
    info = cli.json("open", "beast", "--via", "unicorn", "--detach", "--local-port", str(port))
    assert api_status(info["url"]) == 200
    os.kill(info["pid"], signal.SIGKILL)
    while procinfo.is_alive(info["pid"], info["started"]):
        time.sleep(0.05)
    listing = cli.run("list").stdout
    assert "orphaned" in listing and "'jupyter tunnel cleanup' removes it" in listing
    assert cli.json("status", "beast")["state"] == "orphaned"
    result = cli.run("cleanup")
    assert result.returncode == 0, result.stderr
    assert f"removed beast: its cli process (pid {info['pid']}) is gone" in result.stdout
    assert_left_nothing(runtime_dir, port)
    assert cli.run("cleanup").stdout.strip() == "Nothing to clean up."
    again = cli.json("open", "beast", "--via", "unicorn", "--detach", "--local-port", str(port))
    try:
        assert again["local_port"] == port and api_status(again["url"]) == 200
    finally:
        assert cli.run("close", "beast").returncode == 0


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Three unrelated processes (not started by jupyter_tunnel)."""
    procs = [subprocess.Popen(["sleep", "300"]) for _ in range(3)]
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def test_cleanup_signals_only_the_very_process_recorded(
        plain_cli: CLI, runtime_dir: Path, sleepers: list[subprocess.Popen[bytes]]) -> None:
    owner, reused, recorded = sleepers
    registry = Registry(runtime_dir / "jupyter_tunnel")
    ident = procinfo.identity
    other_start = int(ident(owner.pid)["started"]) - 1  # type: ignore[call-overload]
    with socket.socket() as held:  # a port the dead tunnel had, now held by someone else
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        registry.write({
            "name": "ghost", "state": "ready", "owner": "cli", "local_port": port,
            # the owner's pid now runs another program (another start time): it is gone
            "pid": owner.pid, "started": other_start,
            "children": [
                {**ident(reused.pid), "started": other_start},  # type: ignore[dict-item]
                ident(recorded.pid),
            ],
        })
        listed = plain_cli.json("list")
        assert [(r["name"], r["state"]) for r in listed] == [("ghost", "orphaned")]
        report = plain_cli.json("cleanup")
        assert [r["name"] for r in report["removed"]] == ["ghost"]
        # (what cleanup saw, should this fail: one loaded CI run got no "ended" here, once)
        assert [e["pid"] for e in report["ended"]] == [recorded.pid], (
            report, [(p.pid, p.poll(), procinfo.identity(p.pid)) for p in sleepers])
        left = {(item.get("pid"), item.get("port")) for item in report["left"]}
        assert left == {(reused.pid, None), (os.getpid(), port)}
        assert any(f"local port {port} is now held by pid {os.getpid()}" in item["why"]
                   for item in report["left"])
        assert recorded.wait(5) == -signal.SIGTERM
        assert owner.poll() is None and reused.poll() is None
        held.getsockname()  # still ours, untouched
    assert registry_files(runtime_dir) == []


def test_close_of_an_orphan_with_reused_pid_signals_nothing(
        plain_cli: CLI, runtime_dir: Path, sleepers: list[subprocess.Popen[bytes]]) -> None:
    owner = sleepers[0]
    registry = Registry(runtime_dir / "jupyter_tunnel")
    registry.write({"name": "ghost", "state": "ready", "owner": "cli", "pid": owner.pid,
                    "started": int(procinfo.start_time(owner.pid) or 0) - 1,
                    "cmdline": ["python", "-m", "jupyter_tunnel"]})
    result = plain_cli.run("close", "ghost")
    assert result.returncode == 0, result.stderr
    assert owner.poll() is None
    assert registry_files(runtime_dir) == []


WORKER = r"""
import json, os, sys, time
from jupyter_tunnel.registry import Registry
from jupyter_tunnel.procinfo import self_identity
reg = Registry(sys.argv[1])
pid, started = self_identity()
names = []
for i in range(10):
    names.append(reg.claim({"name": "beast", "pid": pid, "started": started, "i": i},
                           rename=True))
    assert reg.update(names[-1], pid, state="ready", bytes_in=i)
    own = f"w{pid}-{i}"  # a record of its own, made and removed amid the others' claims
    reg.claim({"name": own, "pid": pid, "started": started})
    assert reg.remove(own, owner_pid=pid)
print(json.dumps(names), flush=True)
while not os.path.exists(sys.argv[2]):  # stay alive: live owners keep their names
    time.sleep(0.05)
"""


def test_fifty_concurrent_registry_operations(tmp_path: Path) -> None:
    folder, done = tmp_path / "reg", tmp_path / "done"
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(folder), str(done)],
                                stdout=subprocess.PIPE, text=True) for _ in range(5)]
    try:
        claimed = [json.loads(w.stdout.readline()) for w in workers]  # type: ignore[union-attr]
        names = [n for batch in claimed for n in batch]
        assert len(names) == 50 and len(set(names)) == 50, names  # one name, one tunnel
        files = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
        assert set(files) == set(names)  # nothing lost, nothing left over
        assert all(record["name"] == name and record["state"] == "ready"
                   and record["bytes_in"] == record["i"] for name, record in files.items())
        assert not list(folder.glob(".tmp-*"))
        assert oct(folder.stat().st_mode & 0o777) == "0o700"
        assert {oct(p.stat().st_mode & 0o777) for p in folder.glob("*.json")} == {"0o600"}
    finally:
        done.touch()
        for w in workers:
            w.wait(10)
