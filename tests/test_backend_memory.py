"""The in-process backend and the C allocator: malloc arenas capped before the relay
threads start, free memory handed back after connections end."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading

import pytest

from jupyter_tunnel.backends import memory

glibc = pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                           reason="glibc's malloc")


# capping the arenas --------------------------------------------------------------------
def test_arenas_are_capped_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_limited", False)
    calls: list[tuple[int, int]] = []

    def mallopt(param: int, value: int) -> int:
        calls.append((param, value))
        return 1

    assert memory.limit_arenas(mallopt, environ={})
    assert calls == [(-8, memory.ARENA_MAX)]  # M_ARENA_MAX
    assert not memory.limit_arenas(mallopt, environ={}) and len(calls) == 1


def test_the_users_own_arena_setting_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_limited", False)
    calls: list[tuple[int, int]] = []
    assert not memory.limit_arenas(lambda p, v: calls.append((p, v)) or 1,
                                   environ={"MALLOC_ARENA_MAX": "8"})
    assert calls == []


_COUNT_ARENAS = r"""
import json, sys, threading
from jupyter_tunnel.backends import memory
if sys.argv[1] == "cap":
    assert memory.limit_arenas()
ready, done = threading.Barrier(13), threading.Event()
kept = []

def work():
    kept.append(bytearray(100_000))  # this thread's first malloc: an arena for it
    ready.wait()
    done.wait()

threads = [threading.Thread(target=work) for _ in range(12)]
for t in threads:
    t.start()
ready.wait()
# another thread's heap: 64 MiB reserved at a 64 MiB boundary, read-write then PROT_NONE
maps = [line.split() for line in open("/proc/self/maps")]
spans = [(*(int(x, 16) for x in m[0].split("-")), m[1], len(m) > 5) for m in maps]
heaps = sum(1 for (s, e, perm, named), nxt in zip(spans, spans[1:] + [(0, 0, "", True)])
            if s % (64 << 20) == 0 and perm == "rw-p" and not named
            and (e - s == 64 << 20 or (nxt[0] == e and nxt[2] == "---p"
                                       and nxt[1] - s == 64 << 20)))
done.set()
print(json.dumps(heaps))
"""


def _thread_heaps(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    done = subprocess.run([sys.executable, "-c", _COUNT_ARENAS, mode], env=env,
                          capture_output=True, text=True, timeout=60, check=True)
    heaps: int = json.loads(done.stdout)
    return heaps


@glibc
def test_relay_threads_share_a_few_arenas() -> None:
    assert _thread_heaps("stock") >= 4  # glibc's default: a new arena per thread, 16 here
    assert _thread_heaps("cap") <= memory.ARENA_MAX - 1  # the main arena is the brk heap


def test_the_backend_caps_the_arenas_before_relaying(monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_tunnel.backends.sshtunnel_backend import SSHTunnelBackend

    calls: list[str] = []
    monkeypatch.setattr(memory, "limit_arenas", lambda: calls.append("cap") or True)
    SSHTunnelBackend()
    assert calls == ["cap"]


# handing memory back -------------------------------------------------------------------
class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_memory_is_handed_back_at_most_every_interval_or_once_idle() -> None:
    clock, calls = _Clock(), []
    releaser = memory.MemoryReleaser(interval=10, idle_interval=1, trim=calls.append,
                                     clock=clock)
    assert not releaser.connection_ended(idle=False) and not calls  # just made
    clock.now += 1
    assert not releaser.connection_ended(idle=False)  # others still relaying: not yet
    assert releaser.connection_ended(idle=True) and calls == [0]  # the last one ended
    clock.now += 0.5
    assert not releaser.connection_ended(idle=True)
    clock.now += 9
    assert not releaser.connection_ended(idle=False)
    clock.now += 1
    assert releaser.connection_ended(idle=False) and calls == [0, 0]
    assert releaser.releases == 2


def _rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmRSS:"))


@glibc
def test_memory_freed_by_a_connections_thread_is_handed_back() -> None:
    kept: list[bytes] = []

    def connection() -> None:
        # 64 KiB reads freed, small records kept between them (as a relay thread leaves
        # its arena): glibc keeps the holes, ~32 MB of touched pages
        reads = []
        for i in range(500):
            reads.append(b"r" * (65536 - i))
            kept.append(b"k" * (1024 + i))
        reads.clear()

    thread = threading.Thread(target=connection)
    thread.start()
    thread.join()
    before = _rss()
    releaser = memory.MemoryReleaser(interval=0, idle_interval=0)  # the real malloc_trim
    assert releaser.connection_ended(idle=True)
    assert before - _rss() > 16e6, (before, _rss())
    assert len(kept) == 500
