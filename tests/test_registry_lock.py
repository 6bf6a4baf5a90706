"""The registry leaves nothing once its last record goes, and its lock stays exclusive
while the lock file comes and goes."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from jupyter_tunnel.registry import Registry


def _record(name: str) -> dict[str, object]:
    pid = os.getpid()
    return {"name": name, "state": "ready", "pid": pid, "started": None}


def test_the_last_record_takes_the_folder_along(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "jupyter_tunnel")
    registry.claim(_record("a"))
    registry.claim(_record("b"))
    assert registry.remove("a", owner_pid=os.getpid())
    assert sorted(p.name for p in registry.path.iterdir()) == [".lock", "b.json"]
    assert registry.remove("b", owner_pid=os.getpid())
    assert not registry.path.exists()
    assert registry.all() == []
    registry.claim(_record("c"))  # and it comes back when needed, 0700
    assert oct(registry.path.stat().st_mode & 0o777) == oct(0o700)


def test_no_two_holders_while_the_lock_file_is_removed(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "jupyter_tunnel")
    registry.claim(_record("a"))
    inside = 0
    most = 0
    guard = threading.Lock()

    def worker(n: int) -> None:
        nonlocal inside, most
        for i in range(30):
            name = f"w{n}-{i}"
            with registry.lock():
                with guard:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.001)
                with guard:
                    inside -= 1
            registry.claim(_record(name))
            registry.remove(name, owner_pid=os.getpid())
            if n == 0 and i % 3 == 0:
                registry.remove("a", owner_pid=os.getpid())  # the folder may go now
            elif n == 0:
                registry.save(_record("a"), owner_pid=os.getpid())

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert most == 1
    registry.remove("a", owner_pid=os.getpid())
    assert not registry.path.exists()


def test_a_folder_removed_while_it_is_made_is_made_again(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """mkdir(exist_ok=True) looks twice: the folder exists (made by another process), then
    is gone (removed with its last record) when it checks that it is a folder.  That
    raised FileExistsError in a loaded CI run; the registry makes the folder again."""
    registry = Registry(tmp_path / "jupyter_tunnel")
    registry.path.mkdir(mode=0o700)
    real_is_dir = Path.is_dir
    removed = []

    def is_dir(self: Path) -> bool:
        if self == registry.path and not removed:
            removed.append(True)
            self.rmdir()  # the other process's last record went just now
        return real_is_dir(self)

    monkeypatch.setattr(Path, "is_dir", is_dir)
    with registry.lock():
        registry.write(_record("beast"))
    assert removed and registry.read("beast") is not None
    assert (registry.path.stat().st_mode & 0o777) == 0o700
