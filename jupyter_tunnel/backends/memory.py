"""The in-process backend and the C allocator: fewer arenas, free memory handed back.

Each connection is relayed by a thread of its own, and glibc's malloc gives threads
arenas of their own (up to 8 per core).  What a relay thread frees stays in its arena,
scattered between live blocks; with many arenas each slowly reaches the high-water mark
of the bursts it served, and the process creeps (``benchmarks/soak.py``: +1.4 MB of
malloc arenas over 15 minutes at load 9, while Python's live objects and malloc's bytes
in use stayed flat).  Two remedies, both glibc only (elsewhere nothing is done):

- :func:`limit_arenas` caps the number of arenas (``M_ARENA_MAX``) before the relays
  start, so the threads share a few arenas and reuse each other's free space;
- :class:`MemoryReleaser` hands whole free pages back after connections end
  (``malloc_trim``).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import cast

__all__ = ["ARENA_MAX", "MemoryReleaser", "limit_arenas", "releaser"]

#: malloc arenas the process may use once :func:`limit_arenas` ran (glibc's default: 8
#: per core).  Python's small objects live in its own pools, so the arenas hold the
#: larger buffers (reads, SSH packets), mostly allocated with the GIL held: sharing two
#: arenas costs little contention and lets every thread reuse what the others freed.
ARENA_MAX = 2
#: glibc's mallopt parameter for that (malloc.h)
_M_ARENA_MAX = -8
#: seconds between two hand-backs of the C allocator's free memory while connections
#: are being relayed, at least (see :class:`MemoryReleaser`)
RELEASE_INTERVAL = 10.0
#: the same once no connection is being relayed (so a burst's memory goes back when it
#: ends, not up to 10 s later; 100 one-request connections in a row trim a few times)
RELEASE_IDLE_INTERVAL = 0.1


def _glibc(name: str) -> Callable[..., int] | None:
    """glibc's function ``name`` in this process, or None (another C library, not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return cast(Callable[..., int], getattr(ctypes.CDLL(None), name))
    except (OSError, AttributeError):
        return None


def _malloc_trim() -> Callable[[int], int] | None:
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]  # type: ignore[attr-defined]
        trim.restype = ctypes.c_int  # type: ignore[attr-defined]
    return trim


_limited = False
_limit_lock = threading.Lock()


def limit_arenas(mallopt: Callable[[int, int], int] | None = None,
                 environ: dict[str, str] | None = None) -> bool:
    """Cap the process's malloc arenas at :data:`ARENA_MAX`, once; return whether it was
    done now.  Left alone when the user chose (``MALLOC_ARENA_MAX`` in the environment).

    glibc fixes the cap the first time a thread needs a new arena past the ninth, so
    this acts if called early, before the relay threads start (a Jupyter server has a
    handful of threads then); later it changes nothing and harms nothing.
    """
    global _limited
    env = os.environ if environ is None else environ
    with _limit_lock:
        if _limited or "MALLOC_ARENA_MAX" in env:
            return False
        _limited = True
        fn = _glibc("mallopt") if mallopt is None else mallopt
        if fn is None:
            return False
        return bool(fn(_M_ARENA_MAX, ARENA_MAX))


class MemoryReleaser:
    """Hands the C allocator's free memory back to the system after connections end.

    Thousands of short connections (each with its 64 KiB reads and SSH packets) leave
    the arenas holding free memory between live blocks; glibc returns only the free top
    of a heap by itself.  ``malloc_trim(0)`` gives every whole free page of every arena
    back (about 2 ms for 20 MB of heap here); done at most every ``interval`` seconds, or
    ``idle_interval`` once no connection is being relayed.  Elsewhere than glibc:
    nothing is done.
    """

    def __init__(self, interval: float = RELEASE_INTERVAL,
                 idle_interval: float = RELEASE_IDLE_INTERVAL,
                 trim: Callable[[int], int] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.idle_interval = idle_interval
        self._trim = _malloc_trim() if trim is None else trim
        self._clock = clock
        self._last = clock()
        self._lock = threading.Lock()
        #: how many times memory was handed back
        self.releases = 0

    def connection_ended(self, idle: bool) -> bool:
        """A connection stopped relaying (``idle``: it was the last): hand the free memory
        back if it is time; return whether it was done."""
        if self._trim is None:
            return False
        wait = self.idle_interval if idle else self.interval
        if self._clock() - self._last < wait or not self._lock.acquire(blocking=False):
            return False
        try:
            now = self._clock()
            if now - self._last < wait:  # another thread did it meanwhile
                return False
            self._trim(0)
            self._last = self._clock()
            self.releases += 1
            return True
        finally:
            self._lock.release()


#: the process's one releaser (the allocator is the process's)
releaser = MemoryReleaser()
