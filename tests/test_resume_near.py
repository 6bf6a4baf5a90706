"""The laptop side of resumable streams (NearEnd) against the real helper program.

The helper runs as a subprocess exactly as in test_resume_remote; the engine reaches its
Unix socket through an in-test proxy that can sever every link at once and refuse new
ones for a while (the outage), or freeze them (a half-dead SSH session).  Targets are
TCP servers on loopback; local clients are TCP connections on loopback whose accepted
ends are adopted, as a backend's listener would hand them over.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import struct
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from near_rig import (
    MiB,
    Rig,
    digest,
    echo_thread,
    ended_by,
    open_fds,
    read_to_end,
    rigs,
)
from resume_rig import SECRET, bulk, echo, until_reset, wait_for

from jupyter_tunnel.resume.frames import Ack, Data, Frame, FrameDecoder, Welcome
from jupyter_tunnel.resume.near import NearEnd, NearSettings
from jupyter_tunnel.resume.near_loop import HIGH_WATER, READ_SIZE
from jupyter_tunnel.resume.replay import ACK_DELAY


@pytest.fixture
def make_rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Rig]]:
    yield from rigs(tmp_path_factory)


@pytest.mark.parametrize("seed", [1, 2])
def test_a_download_and_an_echo_survive_cuts_at_random_points(make_rig: Any, seed: int) -> None:
    rng = random.Random(seed)
    rig = make_rig()
    rig.start()
    down = rng.randbytes(8 * MiB + rng.randrange(1000))
    target = rig.target(bulk(down))
    failures: list[str] = []
    echoing = echo_thread(rig.client(rig.target(echo)), rng.randbytes(2 * MiB), failures)
    client = rig.client(target)
    client.shutdown(socket.SHUT_WR)  # nothing to upload
    cuts = sorted(rng.randrange(1, len(down)) for _ in range(4))
    got = bytearray()
    client.settimeout(60)
    while data := client.recv(65536):
        got += data
        while cuts and len(got) >= cuts[0]:
            cuts.pop(0)
            rig.proxy.cut(refuse=rng.uniform(0.0, 0.5))
    assert cuts == []
    assert hashlib.sha256(got).digest() == hashlib.sha256(down).digest()
    echoing.join()
    assert failures == []
    wait_for(lambda: target.results, what="the target's end")
    assert target.results == [hashlib.sha256(b"").hexdigest()]
    assert rig.proxy.connects >= 4  # the links were made again
    rig.idle()


def test_an_upload_goes_on_across_a_cut(make_rig: Any) -> None:
    rig = make_rig()
    rig.start()
    upload = random.Random(3).randbytes(8 * MiB)
    target = rig.target(digest)
    client = rig.client(target)
    for i in range(0, len(upload), 65536):
        client.sendall(upload[i:i + 65536])
        if i == 3 * MiB:
            rig.proxy.cut(refuse=0.5)
    client.shutdown(socket.SHUT_WR)
    assert read_to_end(client) == (hashlib.sha256(upload).hexdigest().encode(), "eof")
    wait_for(lambda: target.results == ["ok"], what="the target's end")
    assert rig.proxy.refused > 0
    rig.idle()


def test_half_close_goes_through_a_cut_both_ways(make_rig: Any) -> None:
    rig = make_rig()
    rig.start()
    heard, go = threading.Event(), threading.Event()

    def answers_after_eof(conn: socket.socket) -> bytes:
        got = read_to_end(conn)[0]
        heard.set()
        go.wait(60)
        conn.sendall(got[::-1])
        return got

    def speaks_first(conn: socket.socket) -> bytes:
        conn.sendall(b"first")
        conn.shutdown(socket.SHUT_WR)
        return read_to_end(conn)[0]

    late, early = rig.target(answers_after_eof), rig.target(speaks_first)
    one, two = rig.client(late), rig.client(early)
    one.sendall(b"hello world")
    one.shutdown(socket.SHUT_WR)
    assert read_to_end(two) == (b"first", "eof")
    wait_for(heard.is_set, what="the target to see our EOF")
    rig.proxy.cut(refuse=0.5)
    go.set()
    two.sendall(b"second")  # still open for writing after the target's EOF
    two.shutdown(socket.SHUT_WR)
    assert read_to_end(one) == (b"dlrow olleh", "eof")
    wait_for(lambda: late.results and early.results, what="the targets' ends")
    assert late.results == [b"hello world"] and early.results == [b"second"]
    rig.idle()


def test_a_kernel_like_trickle_loses_no_line_in_a_one_second_outage(make_rig: Any) -> None:
    rig = make_rig()
    rig.start()
    lines = [f"line {i} of the cell's output\n".encode() for i in range(60)]

    def trickle(conn: socket.socket) -> str:
        for line in lines:  # one line every 50 ms for 3 s
            conn.sendall(line)
            time.sleep(0.05)
        conn.shutdown(socket.SHUT_WR)
        return until_reset(conn)

    client = rig.client(rig.target(trickle))
    got = read_to_end(client, until=lambda d: d.count(b"\n") >= 25)[0]
    rig.proxy.cut(refuse=1.0)
    t0 = time.monotonic()
    more, how = read_to_end(client)
    assert how == "eof"
    assert (got + more).splitlines(keepends=True) == lines
    assert time.monotonic() - t0 >= 0.9  # the outage did happen while lines were coming
    assert any(s.streams_held == 1 and not s.link_up for _, s in rig.changes)
    client.close()


def _frames_read(reads: list[tuple[float, str, bytes]], way: str
                 ) -> list[tuple[float, list[Frame]]]:
    """Each read of one direction of a recorded link: when, and the frames it completed."""
    decoder = FrameDecoder()
    return [(t, decoder.feed(data)) for t, w, data in reads if w == way and data]


def _alone(frames: list[Frame]) -> bool:
    """A read that carried WELCOME or ACK frames and no DATA or EOF for them to ride with."""
    return bool(frames) and all(isinstance(f, Welcome | Ack) for f in frames)


def test_acks_ride_with_data_and_go_alone_only_after_a_delay(make_rig: Any) -> None:
    # An ACK (or WELCOME) written alone and the answer's DATA right after are two small
    # writes: an SSH transport with Nagle on holds the second for ~40 ms (delayed ACK).
    rig = make_rig()
    rig.start()
    rig.proxy.record = True  # the stream's link only: the control link is up already

    def slow_answers(conn: socket.socket) -> str:
        while data := conn.recv(65536):
            if data != b"quiet":
                time.sleep(0.05)  # time enough for an ACK of the request to go alone
                conn.sendall(data.upper())
        conn.shutdown(socket.SHUT_WR)
        return "eof"

    client = rig.client(rig.target(slow_answers))
    client.settimeout(20)
    for i in range(5):
        client.sendall(b"request %d" % i)
        assert client.recv(100) == b"REQUEST %d" % i
    answered = time.monotonic()
    (link,) = [p for p in rig.proxy.pairs if p.record]
    wait_for(lambda: any(_alone(f) for _, f in _frames_read(link.reads, "up")),
             timeout=ACK_DELAY + 5, what="the ACK of the last answer, alone")
    down, up = _frames_read(link.reads, "down"), _frames_read(link.reads, "up")
    assert not any(_alone(f) for _, f in down)  # WELCOME and ACKs came with the answers
    assert isinstance(down[0][1][0], Welcome)
    assert all(any(isinstance(f, Data) for f in frames) for _, frames in up[:5])
    (t, frames), = [(t, f) for t, f in up if _alone(f)]  # the ACKs of the first 4 rode
    assert frames == [Ack(sum(len(b"REQUEST %d" % i) for i in range(5)))]
    assert ACK_DELAY / 2 <= t - answered <= ACK_DELAY + 2  # alone, but not late

    # no answer to ride with: the helper's ACK goes alone, after the delay
    sent = time.monotonic()
    client.sendall(b"quiet")
    wait_for(lambda: any(_alone(f) for _, f in _frames_read(link.reads, "down")),
             timeout=ACK_DELAY + 5, what="the helper's ACK, alone")
    (t, frames), = [(t, f) for t, f in _frames_read(link.reads, "down") if _alone(f)]
    assert frames == [Ack(sum(len(b"request %d" % i) for i in range(5)) + 5)]
    assert ACK_DELAY / 2 <= t - sent <= ACK_DELAY + 2
    wait_for(lambda: rig.status().bytes_buffered == 0, what="the near end's buffer freed")
    client.shutdown(socket.SHUT_WR)
    assert read_to_end(client) == (b"", "eof")
    rig.idle()
    # the ACK of our EOF waited a moment for the target's EOF and went with it
    assert len([f for _, f in _frames_read(link.reads, "down") if _alone(f)]) == 1


def test_thirty_streams_adopted_at_once_survive_a_cut(make_rig: Any) -> None:
    rig = make_rig()
    near = rig.start()
    target = rig.target(echo)
    n = 30
    halfway = threading.Barrier(n + 1, timeout=60)
    failures: list[str] = []

    def one(i: int) -> None:
        try:
            data = random.Random(i).randbytes(128 * 1024 + i)
            client = rig.local.client(near, target.address)  # adopted from 30 threads
            client.settimeout(60)
            client.sendall(data[:65536])
            assert read_to_end(client, until=lambda d: len(d) >= 65536)[0] == data[:65536]
            halfway.wait()
            halfway.wait()  # the cut is made
            client.sendall(data[65536:])
            client.shutdown(socket.SHUT_WR)
            assert read_to_end(client) == (data[65536:], "eof")
        except BaseException:
            failures.append(traceback.format_exc())
            halfway.abort()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    halfway.wait()
    rig.proxy.cut(refuse=0.5)
    halfway.wait()
    for t in threads:
        t.join()
    assert failures == []
    assert max(s.streams_held for _, s in rig.changes) == n  # all held at once, then resumed
    wait_for(lambda: target.results == ["eof"] * n, what="every target's clean end")
    rig.idle()


def test_a_stream_over_the_helpers_limit_is_reset_at_both_ends(make_rig: Any) -> None:
    rig = make_rig(stream_limit=256 * 1024)
    rig.start(stream_limit=16 * MiB)  # misconfigured: more than the helper's
    go = threading.Event()

    def stalled(conn: socket.socket) -> str:
        go.wait(60)
        return until_reset(conn)

    target = rig.target(stalled)
    client = rig.client(target)
    client.settimeout(60)
    with pytest.raises(ConnectionResetError):  # a reset, never a clean end
        client.sendall(random.randbytes(64 * MiB))
    go.set()
    wait_for(lambda: target.results, what="the target's end")
    assert target.results == ["reset"]
    other = rig.client(rig.target(echo))
    other.sendall(b"the others go on")
    other.shutdown(socket.SHUT_WR)
    assert read_to_end(other) == (b"the others go on", "eof")
    rig.idle()


def test_an_outage_longer_than_the_limit_resets_the_client(make_rig: Any) -> None:
    rig = make_rig()
    near = rig.start(outage=1.5)
    target = rig.target(until_reset)
    client = rig.client(target)
    client.sendall(b"x")
    wait_for(lambda: rig.status().streams_open == 1 and rig.status().streams_held == 0,
             what="the stream open")
    cut_at = time.time()
    rig.proxy.cut(refuse=600)
    wait_for(lambda: rig.status().streams_held == 1, what="the stream held")
    status = rig.status()
    assert not status.link_up and status.down_since is not None
    assert cut_at - 1 <= status.down_since <= time.time()
    t0 = time.monotonic()
    assert ended_by(client) == "reset"
    assert 1.0 < time.monotonic() - t0 < 30
    # the status is published at the end of the engine's round: the client may see its
    # reset first (a loaded clean-clone run read 1 here)
    wait_for(lambda: rig.status().streams_open == 0, what="the stream gone from the status")
    rig.proxy.refuse_until = 0.0
    near.poke()
    wait_for(lambda: rig.status().link_up, what="the link back")
    assert rig.status().down_since is None
    rig.helper.stop(rig.answer)  # the helper still held its end: a reset, never an EOF
    wait_for(lambda: target.results, what="the target's end")
    assert target.results == ["reset"]


def test_a_client_reset_during_an_outage_resets_the_target_once_the_link_is_back(
        make_rig: Any) -> None:
    rig = make_rig()  # the helper would hold the target for 60 s on its own
    near = rig.start()
    target = rig.target(until_reset)
    client = rig.client(target)
    client.sendall(b"x")
    wait_for(lambda: rig.status().streams_open == 1 and rig.status().streams_held == 0,
             what="the stream open")
    rig.proxy.cut(refuse=600)
    wait_for(lambda: rig.status().streams_held == 1, what="the stream held")
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # the application gives up with a reset
    rig.local.clients.remove(client)
    rig.idle()
    assert target.results == []
    rig.proxy.refuse_until = 0.0
    near.poke()
    wait_for(lambda: target.results, what="the target's end")
    assert target.results == ["reset"]


@pytest.mark.parametrize("restart", [False, True], ids=["killed", "restarted"])
def test_a_killed_helper_resets_the_clients(make_rig: Any, restart: bool) -> None:
    rig = make_rig()
    rig.start(outage=60.0 if restart else 2.0)
    targets = [rig.target(until_reset) for _ in range(3)]
    clients = [rig.client(t) for t in targets]
    for c in clients:
        c.sendall(b"x")
    wait_for(lambda: rig.status().streams_open == 3 and rig.status().streams_held == 0,
             what="the streams open")
    os.kill(rig.answer["pid"], signal.SIGKILL)
    wait_for(lambda: rig.helper.gone(rig.answer), what="the helper gone")
    if restart:  # a new helper of the same tunnel knows none of the streams
        again = rig.helper.start(outage=60.0)
        assert again["socket"] == rig.answer["socket"] and again["pid"] != rig.answer["pid"]
    t0 = time.monotonic()
    assert [ended_by(c) for c in clients] == ["reset"] * 3
    assert time.monotonic() - t0 < (20 if restart else 30)
    for t in targets:
        wait_for(lambda t=t: t.results, what="the target's end")  # type: ignore[misc]
        assert t.results == ["reset"]
    if restart:
        wait_for(lambda: rig.status().link_up, what="the link to the new helper")
    else:
        for p in rig.helper.folder.iterdir():  # what cleanup removes once the pid is gone
            p.unlink()


def test_a_link_that_stops_answering_is_dropped_and_resumed(make_rig: Any) -> None:
    rig = make_rig(keepalive=0.5)
    rig.start(keepalive=0.5)
    client = rig.client(rig.target(echo))
    client.settimeout(60)
    stalled_at = 0.0
    for i in range(30):
        if i == 10:
            stalled_at = time.monotonic()
            rig.proxy.stall()  # open, silent: the session is half-dead
        msg = f"ping {i}\n".encode()
        client.sendall(msg)
        assert read_to_end(client, until=lambda d, m=msg: d == m)[0] == msg  # type: ignore[misc]
        time.sleep(0.05)
    down = [t for t, s in rig.changes if t > stalled_at and not s.link_up]
    assert down, "the stale link was never dropped"
    assert 0.8 <= down[0] - stalled_at < 10  # about 3 x keepalive
    client.shutdown(socket.SHUT_WR)
    assert ended_by(client) == "eof"
    rig.idle()


def test_a_link_without_answer_to_its_hello_is_tried_again(make_rig: Any) -> None:
    """A channel that opens but never answers (the far end gone, its session lingering)
    must not hold a stream until the outage limit."""
    rig = make_rig(keepalive=0.5)
    calls, silent = [0], []

    def connect() -> socket.socket:
        calls[0] += 1
        if calls[0] == 2:  # the first stream link: open, and silent for ever
            mine, theirs = socket.socketpair()
            silent.append(theirs)
            return mine
        return rig.proxy.connect()

    rig.start(keepalive=0.5, connect=connect)
    t0 = time.monotonic()
    client = rig.client(rig.target(echo))
    client.sendall(b"are you there")
    client.shutdown(socket.SHUT_WR)
    assert read_to_end(client, timeout=30) == (b"are you there", "eof")
    assert 1.0 <= time.monotonic() - t0 < 20 and len(silent) == 1
    silent[0].close()
    rig.idle()


def test_close_ends_the_helper_and_resets_every_client_without_leaking(make_rig: Any) -> None:
    rig = make_rig()
    targets = [rig.target(until_reset) for _ in range(3)]
    before = open_fds()
    near = rig.start()
    clients = [rig.client(t) for t in targets]
    for c in clients:
        c.sendall(b"x")
    wait_for(lambda: rig.status().streams_open == 3 and rig.status().streams_held == 0,
             what="the streams open")
    near.close()
    near.close()  # idempotent
    wait_for(lambda: rig.helper.gone(rig.answer), what="the helper gone")
    assert [ended_by(c) for c in clients] == ["reset"] * 3
    late = rig.client(targets[0])  # adopted after close: reset at once
    assert ended_by(late) == "reset"
    for t in targets:
        wait_for(lambda t=t: t.results, what="the target's end")  # type: ignore[misc]
        assert t.results == ["reset"]
    for c in [*clients, late]:
        c.close()
    rig.local.clients.clear()
    rig.proxy.close()
    # (at most: another test's threads may close theirs meanwhile in a whole-suite run)
    wait_for(lambda: open_fds() <= before, what=f"{before} fds open again")
    assert not [t for t in threading.enumerate() if t.name.startswith("jupyter-tunnel-near")]


def test_close_ends_the_helper_even_before_the_control_link_is_up(make_rig: Any) -> None:
    rig = make_rig()
    slow = threading.Event()

    def connect() -> socket.socket:
        slow.wait(0.5)  # an SSH channel takes a while to open
        return rig.proxy.connect()

    near = NearEnd(connect, SECRET.encode())
    near.start()
    near.close()  # at once: the control link is still being opened
    wait_for(lambda: rig.helper.gone(rig.answer), what="the helper gone")
    assert list(rig.helper.folder.iterdir()) == []


def test_close_does_not_wait_for_a_link_that_is_down(make_rig: Any) -> None:
    rig = make_rig()
    near = rig.start()
    rig.proxy.cut(refuse=600)
    wait_for(lambda: not rig.status().link_up, what="the link down")
    t0 = time.monotonic()
    near.close(timeout=3.0)
    assert time.monotonic() - t0 < 2.0  # the one attempt failed: nothing to wait for
    rig.proxy.refuse_until = 0.0
    rig.helper.stop(rig.answer)  # it would end alone after its outage limit


def test_a_refused_target_resets_the_client(make_rig: Any) -> None:
    rig = make_rig()
    rig.start()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    for target in (f"127.0.0.1:{port}", "nowhere"):
        client = rig.client(target)
        client.sendall(b"data that goes nowhere")
        assert ended_by(client) == "reset", target
    rig.idle()
    fine = rig.client(rig.target(echo))
    fine.sendall(b"fine")
    fine.shutdown(socket.SHUT_WR)
    assert read_to_end(fine) == (b"fine", "eof")


def test_a_client_that_stops_reading_pauses_the_target(make_rig: Any) -> None:
    """Nothing buffers without bound: the engine stops reading the link, the helper its
    target; everything arrives once the client reads."""
    rig = make_rig()
    rig.start()
    down = random.Random(7).randbytes(64 * MiB)
    sent = [0]

    def sender(conn: socket.socket) -> str:
        for i in range(0, len(down), 65536):
            conn.sendall(down[i:i + 65536])
            sent[0] = i + 65536
        conn.shutdown(socket.SHUT_WR)
        return until_reset(conn)

    client = rig.client(rig.target(sender))
    client.shutdown(socket.SHUT_WR)
    last = [-1]

    def stalled() -> bool:
        before, last[0] = last[0], sent[0]
        time.sleep(0.5)
        return before == sent[0]

    wait_for(stalled, what="the sender to stall")
    assert sent[0] < 32 * MiB  # socket buffers and one stream's limit, not the download
    assert 0 < rig.status().bytes_buffered <= HIGH_WATER + READ_SIZE
    got = read_to_end(client)
    assert got[1] == "eof"
    assert hashlib.sha256(got[0]).digest() == hashlib.sha256(down).digest()
    rig.idle()


def test_a_stream_complete_at_the_helper_still_drains_to_a_slow_client(make_rig: Any) -> None:
    """Complete both ways but not yet written to the client when the link dies: no link
    is needed any more (the helper forgot it), the client gets it all and a clean end."""
    rig = make_rig()
    near = rig.start()
    down = random.Random(11).randbytes(400 * 1024)

    def sends(conn: socket.socket) -> str:
        conn.sendall(down)
        conn.shutdown(socket.SHUT_WR)
        return read_to_end(conn)[1]

    target = rig.target(sends)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(rig.local.server.getsockname())
    accepted, _ = rig.local.server.accept()
    accepted.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    near.adopt(accepted, target.address)
    client.shutdown(socket.SHUT_WR)
    wait_for(lambda: target.results == ["eof"], what="the target's clean end")
    # still to be written to the client (the helper may still be sending it when the
    # target ends: a loaded clean-clone run read 0 here at once)
    wait_for(lambda: rig.status().bytes_buffered > 100 * 1024, what="the download held here")
    connects = rig.proxy.connects
    rig.proxy.cut()
    time.sleep(1.0)  # no retry storm: the stream needs no link
    assert rig.proxy.connects - connects <= 2
    assert read_to_end(client) == (down, "eof")
    client.close()
    rig.idle()


def test_a_stream_adopted_during_an_outage_waits_within_its_limit(make_rig: Any) -> None:
    rig = make_rig()
    near = rig.start()
    rig.proxy.cut(refuse=600)
    wait_for(lambda: not rig.status().link_up, what="the link down")
    client = rig.client(rig.target(digest))
    upload = random.Random(9).randbytes(48 * MiB)  # more than the sockets' buffers
    sender = threading.Thread(target=lambda: (client.sendall(upload),
                                              client.shutdown(socket.SHUT_WR)))
    sender.start()
    wait_for(lambda: rig.status().bytes_buffered == MiB, what="the stream's limit taken")
    time.sleep(0.5)
    status = rig.status()
    assert (status.streams_open, status.streams_held, status.bytes_buffered) == (1, 1, MiB)
    assert sender.is_alive()  # paused, not failed
    rig.proxy.refuse_until = 0.0
    near.poke()
    sender.join(60)
    assert read_to_end(client) == (hashlib.sha256(upload).hexdigest().encode(), "eof")
    rig.idle()


def test_a_stream_id_in_use_at_the_helper_is_refused_not_taken_over(make_rig: Any) -> None:
    """A second engine on the same helper (a new process reattaching) that reuses ids
    gets its connection reset: it must never resume another engine's stream."""
    rig = make_rig()
    rig.start()
    mine = rig.client(rig.target(echo))  # stream 1
    mine.sendall(b"one ")
    assert read_to_end(mine, until=lambda d: d == b"one ")[0] == b"one "
    ends, others = [], []
    for first_id in (1, 1000):
        other = NearEnd(rig.proxy.connect, SECRET.encode(), NearSettings(stream_limit=MiB),
                        first_id=first_id)
        others.append(other)
        other.start()
        client = rig.local.client(other, rig.target(echo).address)
        client.sendall(b"other")
        client.shutdown(socket.SHUT_WR)
        ends.append(read_to_end(client))
        if first_id == 1000:
            wait_for(lambda o=other: o.status().streams_open == 0,  # type: ignore[misc]
                     what="the other engine's stream complete")
    assert ends == [(b"", "reset"), (b"other", "eof")]
    mine.sendall(b"two")  # the first engine's stream was not touched
    mine.shutdown(socket.SHUT_WR)
    assert read_to_end(mine) == (b"two", "eof")
    rig.idle()
    for other in others:
        other.close()


def test_the_tunnel_limit_bounds_all_streams_together(make_rig: Any) -> None:
    rig = make_rig()
    near = rig.start(tunnel_limit=2 * MiB)
    rig.proxy.cut(refuse=600)
    wait_for(lambda: not rig.status().link_up, what="the link down")
    uploads = [random.Random(i).randbytes(16 * MiB) for i in range(3)]
    clients = [rig.client(rig.target(digest)) for _ in uploads]
    senders = [threading.Thread(target=lambda c=c, u=u: (c.sendall(u),  # type: ignore[misc]
                                                         c.shutdown(socket.SHUT_WR)))
               for c, u in zip(clients, uploads, strict=True)]
    for t in senders:
        t.start()
    wait_for(lambda: rig.status().bytes_buffered == 2 * MiB, what="the tunnel's limit taken")
    status = rig.status()
    assert (status.streams_held, status.bytes_buffered) == (3, 2 * MiB)
    rig.proxy.refuse_until = 0.0
    near.poke()
    for t in senders:
        t.join(60)
    for c, u in zip(clients, uploads, strict=True):
        assert read_to_end(c) == (hashlib.sha256(u).hexdigest().encode(), "eof")
    rig.idle()


def test_poke_retries_at_once(make_rig: Any) -> None:
    rig = make_rig()
    near = rig.start(retry_first=2.0, retry_max=30.0)
    rig.proxy.cut(refuse=600)
    wait_for(lambda: rig.proxy.refused >= 2, what="two failed attempts")  # next in 4 s
    rig.proxy.refuse_until = 0.0
    t0 = time.monotonic()
    near.poke()
    wait_for(lambda: rig.status().link_up, what="the link back")
    assert time.monotonic() - t0 < 2.5


def test_settings_and_targets_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        NearSettings(retry_first=3.0, retry_max=2.0)
    with pytest.raises(ValueError):
        NearEnd(lambda: socket.socket(), b"")
    near = NearEnd(lambda: socket.socket(), b"s")
    a, b = socket.socketpair()
    with pytest.raises(ValueError):
        near.adopt(a, "")
    near.close()  # never started: nothing to wait for
    near.adopt(a, "127.0.0.1:1")  # after close: closed at once
    assert b.recv(10) == b""
    b.close()
    with pytest.raises(RuntimeError):
        near.start()
