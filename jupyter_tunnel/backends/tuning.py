"""What makes the in-process backend fast: paramiko set up as OpenSSH sets itself up.

Everything here applies to the transports made by :func:`new_transport` only (every hop of
the in-process backend); other paramiko users in the same process (a Jupyter server, a
library) keep paramiko's stock behaviour: nothing of paramiko's is replaced globally.

Measured with ``benchmarks/run.py`` (two hops, 64 MiB through an extra forward); the
numbers are in the README's Performance section.

- **Channel buffers that do not copy what they keep.**  paramiko queues a channel's
  incoming data in an ``array.array`` and removes each read from its front, moving the
  rest of the queue every time: with a window of megabytes, and the next hop's packets
  read from the previous hop's channel a few bytes at a time, that copying was the
  largest cost of a two-hop download.  :class:`ChunkPipe` keeps the packets as they
  came, in a queue, and hands them out without copying the rest (nor growing one large
  buffer, which left the allocator holding tens of MB after busy transfers).  Our
  transports' channel map (:class:`TunedChannelMap`) gives it to each channel as the
  channel is registered, before any data can arrive: same methods, same results.
- **An event pipe that survives a close racing the transport thread** (:class:`_LockedPipe`,
  set up by the same channel map): see its docstring.
- **OpenSSH's channel window (2 MiB), packets twice its size (64 KiB)**: larger packets
  mean fewer of them to handle in Python (a few percent more throughput here).  Larger
  windows bought no throughput here but latency: with a download running, every byte
  the window lets ahead waits in front of an interactive reply (100-byte round trip p50
  ~17 ms with 4 MiB, ~9 ms with 2 MiB, ~3 ms with 512 KiB), and smaller ones would cap
  a connection over a long-distance link at window / round-trip time.
- **A record that does not grow with every connection** (:func:`forget_old_channels`).
- **Memory**: see :mod:`.memory` (fewer malloc arenas, free memory handed back).
- **Ciphers in OpenSSH's order of preference**: AES-GCM where the CPU has AES
  instructions (:func:`cpu_has_aes`), else ChaCha20-Poly1305 if paramiko offers it
  (paramiko 5.1 does not), else AES-CTR with an encrypt-then-MAC.  paramiko itself
  prefers AES-CTR with a separate HMAC, which costs about a third more CPU per byte
  here.  As OpenSSH's client, we no longer offer CBC ciphers, 3DES, MD5 MACs or
  truncated (-96) MACs.
- **Our own log channel** (:data:`LOG_NAME`): the transport threads' messages about
  failures we report ourselves as typed errors are silenced there, not under "paramiko".
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

import paramiko
import paramiko.pipe
from paramiko.buffered_pipe import BufferedPipe, PipeTimeout
from paramiko.transport import ChannelMap

#: the channel window we offer (as OpenSSH does)
WINDOW = 2 << 20
#: the largest packet we accept on a channel (OpenSSH: 32 KiB)
MAX_PACKET = 64 << 10
#: the logger our transports and their channels log to (silenced: no handler, no propagation)
LOG_NAME = "jupyter_tunnel.paramiko"
#: channel ids remembered besides those of open channels (see :func:`forget_old_channels`)
KEEP_CHANNEL_IDS = 512
#: how far the record may grow past that before it is trimmed
TRIM_SLACK = 512
#: seconds between two trims of one transport's record, at least
TRIM_INTERVAL = 5.0

_AEAD_AES = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")
_CHACHA = ("chacha20-poly1305@openssh.com",)
_CTR = ("aes128-ctr", "aes192-ctr", "aes256-ctr")
_MACS = ("hmac-sha2-256-etm@openssh.com", "hmac-sha2-512-etm@openssh.com",
         "hmac-sha2-256", "hmac-sha2-512")
#: no longer offered by OpenSSH's client by default: nor by us
_OLD_CIPHERS = frozenset({"3des-cbc", "aes128-cbc", "aes192-cbc", "aes256-cbc"})
_OLD_MACS = frozenset({"hmac-md5", "hmac-md5-96", "hmac-sha1-96"})

_paramiko_log = logging.getLogger(LOG_NAME)
_paramiko_log.addHandler(logging.NullHandler())
_paramiko_log.propagate = False


class _Chunks:
    """Received packets' bytes, queued as they came: reading takes from the front without
    moving the rest, and no buffer ever grows to the size of the window."""

    def __init__(self) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._offset = 0  # into the first chunk
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, data: bytes) -> None:
        if data:
            self._chunks.append(data)
            self._size += len(data)

    def take(self, limit: int | None = None) -> bytes:
        """Remove and return up to ``limit`` bytes (all with None) from the front."""
        need = self._size if limit is None else min(limit, self._size)
        parts: list[bytes] = []
        self._size -= need
        while need:
            head = self._chunks[0]
            if not self._offset and len(head) <= need:
                parts.append(head)
                self._chunks.popleft()
                need -= len(head)
                continue
            end = min(len(head), self._offset + need)
            parts.append(head[self._offset:end])
            need -= end - self._offset
            if end == len(head):
                self._chunks.popleft()
                self._offset = 0
            else:
                self._offset = end
        return parts[0] if len(parts) == 1 else b"".join(parts)


class ChunkPipe(BufferedPipe):  # type: ignore[misc]
    """paramiko's channel buffer (same methods, same results) on a queue of chunks."""

    def __init__(self) -> None:
        super().__init__()
        self._buffer = _Chunks()

    def _buffer_frombytes(self, data: bytes) -> None:
        self._buffer.append(data)

    def _buffer_tobytes(self, limit: int | None = None) -> bytes:
        raise NotImplementedError  # read() and empty() below take from the queue instead

    def read(self, nbytes: int, timeout: float | None = None) -> bytes:
        """As ``BufferedPipe.read``: up to ``nbytes``, waiting up to ``timeout``."""
        with self._lock:
            if not len(self._buffer):
                if self._closed:
                    return b""
                if timeout == 0.0:
                    raise PipeTimeout()
                while not len(self._buffer) and not self._closed:
                    then = time.time()
                    self._cv.wait(timeout)
                    if timeout is not None:
                        timeout -= time.time() - then
                        if timeout <= 0.0:
                            raise PipeTimeout()
            out = self._buffer.take(nbytes)
            if not len(self._buffer) and self._event is not None and not self._closed:
                self._event.clear()
            return out

    def empty(self) -> bytes:
        """As ``BufferedPipe.empty``: everything buffered."""
        with self._lock:
            out = self._buffer.take()
            if self._event is not None and not self._closed:
                self._event.clear()
            return out


class _LockedPipe(paramiko.pipe.PosixPipe):  # type: ignore[misc]
    """paramiko's event pipe with set/clear/close serialised.

    Without this a forwarding thread's ``Channel.close()`` can close the pipe
    while the transport thread writes to it; the EBADF/EPIPE kills the transport
    and every forward with it (paramiko issues 1157, 2271).
    """

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.RLock()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                super().close()

    def clear(self) -> None:
        with self._lock:
            if not self._closed:
                super().clear()

    def set(self) -> None:
        with self._lock:
            if not self._closed:
                super().set()

    def set_forever(self) -> None:
        with self._lock:
            super().set_forever()


def tune_channel(chan: Any) -> None:
    """Give a channel that has received nothing yet our buffers and a locked event pipe.

    The pipe is what ``Channel.fileno()`` would create on first use (with paramiko's own
    ``make_pipe``); made now, ``fileno()`` just returns it.
    """
    with chan.lock:
        if not isinstance(chan.in_buffer, ChunkPipe) and not len(chan.in_buffer):
            chan.in_buffer = ChunkPipe()
        if not isinstance(chan.in_stderr_buffer, ChunkPipe) and not len(chan.in_stderr_buffer):
            chan.in_stderr_buffer = ChunkPipe()
        if os.name == "posix" and chan._pipe is None:
            chan._pipe = _LockedPipe()
            p1, p2 = paramiko.pipe.make_or_pipe(chan._pipe)
            chan.in_buffer.set_event(p1)
            chan.in_stderr_buffer.set_event(p2)


class TunedChannelMap(ChannelMap):  # type: ignore[misc]
    """A transport's channel map that tunes each channel as paramiko registers it.

    paramiko calls ``put`` when it opens a channel (``open_channel``: before the open
    request is sent) and when it accepts one (``_parse_channel_open``: before the
    confirmation is sent), so no data can have arrived yet.
    """

    def put(self, chanid: int, chan: Any) -> None:
        tune_channel(chan)
        super().put(chanid, chan)


def forget_old_channels(transport: Any, keep: int = KEEP_CHANNEL_IDS, slack: int = TRIM_SLACK,
                        min_interval: float = TRIM_INTERVAL) -> None:
    """Trim paramiko's record of every channel id the transport ever used.

    paramiko keeps it to ignore late messages for channels it no longer holds (the reply
    to our CLOSE arrives after the channel was dropped), and never trims it: about 100
    bytes for each connection ever forwarded.  A message for an id missing from both the
    record and the open channels stops the transport thread: the whole session dies.  So
    an id is forgotten only once it is in none of: the channels open now, those open at
    the previous trim, the ids used since the previous trim, the ``keep`` most recent.
    That is, its channel went away before the previous trim, at least ``min_interval``
    seconds and about ``slack`` channels ago.  Trims when the record holds more than
    ``keep + slack`` ids; done under the transport's lock (which guards the record where
    paramiko adds to it) and the channel map's.
    """
    seen = getattr(transport, "channels_seen", None)
    channels = getattr(transport, "_channels", None)
    if seen is None or channels is None or len(seen) <= keep + slack:
        return
    now = time.monotonic()
    last = getattr(transport, "_jt_last_trim", None)  # (when, ids kept, ids open then)
    if last is not None and now - last[0] < min_interval:
        return
    with transport.lock, channels._lock:
        last = getattr(transport, "_jt_last_trim", None)  # another thread may have trimmed
        if len(transport.channels_seen) <= keep + slack or (
                last is not None and now - last[0] < min_interval):
            return
        kept_before, open_before = (0, frozenset()) if last is None else last[1:]
        ids = list(transport.channels_seen)  # in the order paramiko added them
        open_now = frozenset(channels._map.keys())
        wanted = open_now | open_before | set(ids[kept_before:])
        if keep > 0:
            wanted |= set(ids[-keep:])
        transport.channels_seen = {cid: True for cid in ids if cid in wanted}
        # opens that timed out leave their event behind
        events = transport.channel_events
        for cid in [cid for cid in events if cid not in open_now]:
            del events[cid]
        transport._jt_last_trim = (now, len(transport.channels_seen), open_now)


def _cpuinfo_has_aes(line: str) -> bool:
    """Whether a /proc/cpuinfo line lists ``aes``: x86 ``flags``, arm64 ``Features``."""
    key, sep, value = line.partition(":")
    return bool(sep) and key.strip().lower() in ("flags", "features") and "aes" in value.split()


def _sysctl(name: str) -> str:
    sysctl = shutil.which("sysctl") or "/usr/sbin/sysctl"
    try:
        done = subprocess.run([sysctl, "-n", name], capture_output=True, text=True,
                              timeout=2, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout if done.returncode == 0 else ""


@functools.lru_cache(maxsize=1)
def cpu_has_aes() -> bool:
    """Whether the CPU has AES instructions: the ``aes`` flag of /proc/cpuinfo (x86
    ``flags``, arm64 ``Features``), on macOS ``hw.optional.arm.FEAT_AES`` (Apple silicon)
    or ``AES`` in ``machdep.cpu.features`` (Intel).  Unknown: False."""
    if sys.platform == "darwin":
        return (_sysctl("hw.optional.arm.FEAT_AES").strip() == "1"
                or "AES" in _sysctl("machdep.cpu.features").upper().split())
    try:
        with open("/proc/cpuinfo") as fh:
            return any(_cpuinfo_has_aes(line) for line in fh)
    except OSError:
        return False


def cipher_order(supported: tuple[str, ...] | list[str], aes: bool | None = None) -> list[str]:
    """``supported`` reordered the way OpenSSH would prefer them on this CPU."""
    aes = cpu_has_aes() if aes is None else aes
    first = [*_AEAD_AES, *_CHACHA, *_CTR] if aes else [*_CHACHA, *_CTR, *_AEAD_AES]
    ordered = [c for c in first if c in supported]
    return ordered + [c for c in supported if c not in ordered]


def mac_order(supported: tuple[str, ...] | list[str]) -> list[str]:
    """``supported`` MACs, encrypt-then-MAC first, without the ones OpenSSH dropped."""
    ordered = [m for m in _MACS if m in supported]
    return ordered + [m for m in supported if m not in ordered and m not in _OLD_MACS]


def new_transport(sock: Any) -> paramiko.Transport:
    """A client transport over ``sock`` (a socket, or the previous hop's channel) with our
    channel map, window, packet size, cipher order and log channel."""
    transport = paramiko.Transport(sock, default_window_size=WINDOW,
                                   default_max_packet_size=MAX_PACKET)
    transport._channels = TunedChannelMap()  # no channel exists yet
    transport.set_log_channel(LOG_NAME)
    opts = transport.get_security_options()
    opts.ciphers = [c for c in cipher_order(list(opts.ciphers)) if c not in _OLD_CIPHERS]
    opts.digests = mac_order(list(opts.digests))
    return transport
