"""The remote helper of resumable streams, run locally as the last hop would run it.

The helper program is started with a real Python as a subprocess (its stdin carries the
program and settings, as over SSH), with HOME and XDG_RUNTIME_DIR in the test's own
folder; a small laptop side in the test speaks frames to its Unix socket.  The runtime
folder is made with ``tmp_path_factory.mktemp`` (directly under pytest's basetemp)
rather than under ``tmp_path``: a Unix socket's path must stay under 108 bytes, and long
test names would pass that.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import socket
import stat
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from resume_rig import (
    PYTHONS,
    SECRET,
    Helper,
    Laptop,
    Refused,
    Target,
    bulk,
    control,
    echo,
    frames_until_close,
    until_reset,
    wait_for,
)

from jupyter_tunnel import procinfo
from jupyter_tunnel.resume import remote
from jupyter_tunnel.resume.frames import (
    VERSION,
    Ack,
    Code,
    Data,
    Eof,
    Frame,
    FrameDecoder,
    Hello,
    Mode,
    Refuse,
    Reset,
)
from jupyter_tunnel.resume.replay import Stream


@pytest.fixture(params=PYTHONS)
def helper(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Helper]:
    base = tmp_path_factory.mktemp("h")
    run_dir = base / "run"
    run_dir.mkdir(mode=0o700)
    (base / "home").mkdir()
    h = Helper(request.param, base / "home", run_dir)
    yield h
    for answer in h.started:  # a test that failed may leave its helper running
        if not h.gone(answer):
            h.stop(answer)
    leftovers = sorted(str(p) for p in base.rglob("*") if not p.is_dir())
    for p in leftovers:
        os.unlink(p)
    assert leftovers == []


@pytest.fixture
def targets() -> Iterator[Callable[[Callable[[socket.socket], Any]], Target]]:
    made: list[Target] = []

    def make(handle: Callable[[socket.socket], Any]) -> Target:
        made.append(Target(handle))
        return made[-1]

    yield make
    for t in made:
        t.close()


def test_a_stream_carries_data_both_ways_with_half_close(helper: Helper, targets: Any) -> None:
    answer = helper.start()
    target = targets(echo)
    laptop = Laptop(answer["socket"], 1)
    laptop.open(target.address)
    upload = random.Random(1).randbytes(3 * 2**20)
    laptop.pump(upload)  # sends everything then EOF; the echo comes back after our EOF
    assert hashlib.sha256(laptop.down).digest() == hashlib.sha256(upload).digest()
    wait_for(lambda: target.results == ["eof"], what="the target's clean end")
    laptop.close()
    helper.stop(answer)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_streams_resume_after_cuts_at_random_points(helper: Helper, targets: Any,
                                                     seed: int) -> None:
    """Three streams at once, each cut seven times (the last at the very end): every byte
    arrives once, both ways."""
    answer = helper.start(stream_limit=512 * 1024)
    failures: list[str] = []

    def one(stream_id: int) -> None:
        rng = random.Random(seed * 10 + stream_id)
        try:
            down = rng.randbytes(4 * 2**20 + rng.randrange(1000))
            upload = rng.randbytes(3 * 2**20 + rng.randrange(1000))
            target = targets(bulk(down))
            laptop = Laptop(answer["socket"], stream_id, limit=512 * 1024)
            laptop.open(target.address)
            cuts = [*sorted(rng.randrange(1, len(down)) for _ in range(6)), len(down)]
            laptop.pump(upload, cuts=cuts)
            assert laptop.cuts_done == len(cuts) and laptop.resumes >= 1
            assert hashlib.sha256(laptop.down).digest() == hashlib.sha256(down).digest()
            wait_for(lambda: target.results, what="the target's end")
            assert target.results == [hashlib.sha256(upload).hexdigest()]
            laptop.close()
        except BaseException:
            failures.append(traceback.format_exc())

    threads = [threading.Thread(target=one, args=(i,)) for i in (1, 2, 3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    helper.stop(answer)


def test_data_may_follow_hello_before_welcome(helper: Helper, targets: Any) -> None:
    """A laptop may send its first bytes with NEW, saving a round trip per connection."""
    answer = helper.start()
    target = targets(echo)
    stream = Stream(11, 2**20)
    wire = Hello(VERSION, Mode.NEW, 11, 0, SECRET.encode(), target.address).encode()
    wire += b"".join(f.encode() for f in stream.writer.write(b"ping"))
    wire += stream.writer.write_eof().encode()
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(20)
        sock.connect(answer["socket"])
        sock.sendall(wire)
        decoder, got, down = FrameDecoder(), [], b""
        while not stream.reader.eof:
            for frame in decoder.feed(sock.recv(65536)):
                got.append(type(frame).__name__)
                if isinstance(frame, Data | Eof):
                    down += stream.reader.receive(frame)
        assert got[0] == "Welcome" and down == b"ping"
        sock.sendall(Ack(stream.reader.take_count()).encode())
    wait_for(lambda: target.results == ["eof"], what="the target's clean end")
    helper.stop(answer)


def test_a_wrong_secret_is_refused_and_the_stream_goes_on(helper: Helper, targets: Any) -> None:
    answer = helper.start()
    target = targets(echo)
    laptop = Laptop(answer["socket"], 3)
    laptop.open(target.address)
    laptop.pump(b"before", eof=False, until=lambda: bytes(laptop.down) == b"before")
    laptop.close()
    with pytest.raises(Refused) as refused:
        laptop.resume(secret=b"not the secret")
    assert refused.value.code == Code.SECRET
    with pytest.raises(Refused) as refused:
        Laptop(answer["socket"], 4, secret="wrong").open(target.address)
    assert refused.value.code == Code.SECRET
    laptop.resume()
    laptop.pump(b"before and after")
    assert bytes(laptop.down) == b"before and after"
    laptop.close()
    assert len(target.conns) == 1
    helper.stop(answer)


def test_a_second_start_reports_the_running_helper(helper: Helper) -> None:
    first = helper.start("same")
    second = helper.start("same")
    assert second == {**first, "existing": True}
    assert first["existing"] is False
    other = helper.start("other")
    assert other["pid"] != first["pid"] and other["socket"] != first["socket"]
    helper.stop(other)
    helper.stop(first)
    assert list(helper.folder.iterdir()) == []


def test_an_outage_longer_than_the_limit_resets_the_target(helper: Helper,
                                                           targets: Any) -> None:
    answer = helper.start(outage=1.0)
    target = targets(until_reset)
    keep = control(answer["socket"])  # the laptop is there, only this stream's channel is cut
    laptop = Laptop(answer["socket"], 5)
    laptop.open(target.address)
    laptop.pump(b"hello", eof=False, until=lambda: laptop.stream.writer.acked == 5)
    laptop.close()
    wait_for(lambda: target.results, what="the target's end")
    assert target.results == ["reset"]
    with pytest.raises(Refused) as refused:
        laptop.resume()
    assert refused.value.code == Code.OUTAGE
    keep.close()
    wait_for(lambda: helper.gone(answer), what="the helper ends once the laptop is gone")
    assert list(helper.folder.iterdir()) == []


def test_a_stream_over_its_limit_is_reset_at_both_ends(helper: Helper, targets: Any) -> None:
    answer = helper.start(stream_limit=256 * 1024)
    go = threading.Event()

    def stalled(conn: socket.socket) -> str:
        go.wait(60)
        return until_reset(conn)

    target = targets(stalled)
    other = Laptop(answer["socket"], 1)
    other.open(targets(echo).address)
    laptop = Laptop(answer["socket"], 2, limit=64 * 2**20)  # a laptop that ignores the limit
    laptop.open(target.address)
    with pytest.raises(AssertionError, match="stream limit"):
        laptop.pump(random.randbytes(32 * 2**20))
    assert laptop.reset is not None and laptop.reset.code == Code.OVERFLOW
    go.set()
    wait_for(lambda: target.results, what="the target's end")
    assert target.results == ["reset"]
    other.pump(b"the other stream is fine")  # the other stream goes on
    assert bytes(other.down) == b"the other stream is fine"
    other.close()
    helper.stop(answer)


def test_shutdown_resets_streams_and_removes_the_files(helper: Helper, targets: Any) -> None:
    answer = helper.start()
    target = targets(until_reset)
    laptop = Laptop(answer["socket"], 9)
    laptop.open(target.address)
    laptop.pump(b"x", eof=False, until=lambda: laptop.stream.writer.acked == 1)
    # laptops that stopped reading without the helper knowing: sending their RESET fails
    gone = [targets(until_reset) for _ in range(3)]
    deaf = [Laptop(answer["socket"], 20 + i) for i in range(3)]
    for other, lost in zip(gone, deaf, strict=True):
        lost.open(other.address)
        assert lost.sock is not None
        lost.sock.shutdown(socket.SHUT_RD)
    with control(answer["socket"]) as sock:
        sock.sendall(Reset(Code.SHUTDOWN).encode())
        assert frames_until_close(sock) == []
        assert list(helper.folder.iterdir()) == []  # removed before the channel closed
    assert laptop.sock is not None
    got = frames_until_close(laptop.sock)
    assert [type(f) for f in got] == [Reset] and got[0].code == Code.SHUTDOWN  # type: ignore[attr-defined]
    laptop.close()
    for lost in deaf:
        lost.close()
    wait_for(lambda: helper.gone(answer), what="the helper gone")
    for t in [target, *gone]:
        wait_for(lambda t=t: t.results, what="the target's end")  # type: ignore[misc]
        assert t.results == ["reset"]


def test_sigterm_ends_the_helper_like_a_shutdown(helper: Helper, targets: Any) -> None:
    answer = helper.start()
    target = targets(until_reset)
    laptop = Laptop(answer["socket"], 2)
    laptop.open(target.address)
    laptop.pump(b"x", eof=False, until=lambda: laptop.stream.writer.acked == 1)
    os.kill(answer["pid"], signal.SIGTERM)
    assert laptop.sock is not None
    got = frames_until_close(laptop.sock)
    assert [type(f) for f in got] == [Reset] and got[0].code == Code.SHUTDOWN  # type: ignore[attr-defined]
    laptop.close()
    wait_for(lambda: helper.gone(answer), what="the helper gone")
    wait_for(lambda: target.results, what="the target's end")
    assert target.results == ["reset"]
    assert list(helper.folder.iterdir()) == []


def test_a_killed_helper_leaves_resets_not_eofs(helper: Helper, targets: Any) -> None:
    answer = helper.start()
    target = targets(until_reset)
    laptop = Laptop(answer["socket"], 2)
    laptop.open(target.address)
    laptop.pump(b"x", eof=False, until=lambda: laptop.stream.writer.acked == 1)
    os.kill(answer["pid"], signal.SIGKILL)
    wait_for(lambda: target.results, what="the target's end")
    assert target.results == ["reset"]
    laptop.close()
    wait_for(lambda: helper.gone(answer), what="the helper gone")
    assert sorted(p.name for p in helper.folder.iterdir()) == ["t1.json", "t1.sock"]
    for p in helper.folder.iterdir():  # what cleanup will remove, once the pid is proven gone
        p.unlink()


def test_a_helper_without_laptop_ends_after_the_outage_limit(helper: Helper) -> None:
    answer = helper.start(outage=1.0)
    assert (helper.folder / "t1.sock").exists()
    wait_for(lambda: helper.gone(answer), what="the helper ends alone")
    assert list(helper.folder.iterdir()) == []


def test_files_are_private_and_the_state_proves_the_process(helper: Helper) -> None:
    answer = helper.start()
    folder = helper.folder
    assert answer["socket"] == str(folder / "t1.sock")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_ISSOCK((folder / "t1.sock").stat().st_mode)
    assert stat.S_IMODE((folder / "t1.sock").stat().st_mode) == 0o600
    assert stat.S_IMODE((folder / "t1.json").stat().st_mode) == 0o600
    state = json.loads((folder / "t1.json").read_text())
    assert SECRET not in (folder / "t1.json").read_text()
    assert state == {**procinfo.identity(answer["pid"]), "socket": answer["socket"],  # type: ignore[dict-item]
                     "version": VERSION}
    assert procinfo.is_same(state["pid"], state["started"], state["cmdline"])
    assert SECRET not in " ".join(state["cmdline"])
    helper.stop(answer)


def test_an_unsafe_folder_is_refused_and_an_unusable_runtime_dir_avoided(helper: Helper) -> None:
    helper.folder.mkdir(parents=True, mode=0o700)
    helper.folder.chmod(0o770)
    assert "writable by group or others" in helper.start()["error"]
    helper.folder.chmod(0o700)
    helper.run_dir.chmod(0o755)  # not a private runtime dir: use ~/.cache instead
    answer = helper.start()
    assert answer["socket"] == str(helper.home / ".cache/jupyter_tunnel/resume/t1.sock")
    assert stat.S_IMODE((helper.home / ".cache/jupyter_tunnel/resume").stat().st_mode) == 0o700
    helper.stop(answer)


@pytest.mark.parametrize("settings", [
    "not json", '{"id": "../x", "secret": "s", "stream_limit": 1, "tunnel_limit": 1, "outage": 1}',
    '{"id": "x", "secret": "", "stream_limit": 1, "tunnel_limit": 1, "outage": 1}',
    '{"id": "x", "secret": "s", "stream_limit": "1", "tunnel_limit": 1, "outage": 1}',
])
def test_bad_settings_are_reported(helper: Helper, settings: str) -> None:
    data = remote.start_input(remote.HelperSettings("x", "s"))
    data = data[:data.rindex(b"{")] + settings.encode() + b"\n"
    out = subprocess.run(["sh", "-c", remote.command(helper.python)], input=data,
                         capture_output=True, env=helper.env, timeout=30, check=False)
    assert out.returncode == 1
    assert "settings" in json.loads(out.stdout)["error"]


def test_bad_channels_are_refused_and_the_helper_lives_on(helper: Helper, targets: Any) -> None:
    answer = helper.start()
    target = targets(echo)
    cases = [
        (b"\x63garbage", Code.PROTOCOL),
        (Ack(3).encode(), Code.PROTOCOL),
        (Hello(VERSION, Mode.RESUME, 77, 0, SECRET.encode()).encode(), Code.UNKNOWN_STREAM),
        (Hello(VERSION + 1, Mode.RESUME, 77, 0, SECRET.encode()).encode(), Code.VERSION),
        (Hello(VERSION, Mode.NEW, 1, 0, SECRET.encode(), "nowhere").encode(), Code.CONNECT),
    ]
    for wire, code in cases:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(20)
            sock.connect(answer["socket"])
            sock.sendall(wire)
            got = frames_until_close(sock)
            assert len(got) == 1 and isinstance(got[0], Refuse) and got[0].code == code, got
    laptop = Laptop(answer["socket"], 1)
    laptop.open(target.address)
    assert laptop.sock is not None
    laptop.sock.sendall(Data(5, b"a gap").encode())  # a frame that breaks the stream
    got = frames_until_close(laptop.sock)
    assert [type(f) for f in got] == [Reset] and got[0].code == Code.PROTOCOL  # type: ignore[attr-defined]
    laptop.close()
    fine = Laptop(answer["socket"], 2)
    fine.open(target.address)
    fine.pump(b"still serving")
    assert bytes(fine.down) == b"still serving"
    fine.close()
    helper.stop(answer)


def test_a_stream_resumed_after_its_clean_end_is_complete(helper: Helper,
                                                          targets: Any) -> None:
    """The laptop may lose the channel before hearing the last ACK: a resume then says
    the stream is complete instead of refusing it."""
    answer = helper.start()
    target = targets(echo)
    laptop = Laptop(answer["socket"], 8)
    laptop.open(target.address)
    laptop.pump(b"abc")
    laptop.close()
    wait_for(lambda: target.results == ["eof"], what="the target's clean end")
    laptop.stream.writer.acked = 3  # as if the ACK of our EOF had been lost
    laptop.resume()
    assert laptop.stream.writer.eof_acked and bytes(laptop.down) == b"abc"
    laptop.close()
    helper.stop(answer)


def test_a_resume_takes_the_stream_from_a_stale_channel(helper: Helper, targets: Any) -> None:
    """The old SSH session may linger with the old channel open: the new channel wins."""
    answer = helper.start()
    target = targets(echo)
    laptop = Laptop(answer["socket"], 4)
    laptop.open(target.address)
    laptop.pump(b"one ", eof=False, until=lambda: bytes(laptop.down) == b"one ")
    stale, laptop.sock = laptop.sock, None
    assert stale is not None
    laptop.resume()
    assert frames_until_close(stale) == []  # the helper let the stale channel go
    stale.close()
    laptop.pump(b"one two")
    assert bytes(laptop.down) == b"one two"
    laptop.close()
    helper.stop(answer)


def test_an_absent_laptop_pauses_the_application(helper: Helper, targets: Any) -> None:
    """While no channel is attached the helper reads at most its limit from the target:
    the sender stalls (no reset, no overflow), and everything arrives after the resume."""
    answer = helper.start(stream_limit=256 * 1024)
    down = random.Random(5).randbytes(48 * 2**20)
    sent = [0]

    def sender(conn: socket.socket) -> str:
        for i in range(0, len(down), 65536):
            conn.sendall(down[i:i + 65536])
            sent[0] = i + 65536
        conn.shutdown(socket.SHUT_WR)
        return until_reset(conn)  # then EOF from the laptop's side

    target = targets(sender)
    laptop = Laptop(answer["socket"], 6, limit=256 * 1024)
    laptop.open(target.address)
    laptop.pump(eof=False, until=lambda: len(laptop.down) > 2**20)
    laptop.close()
    last = [-1]

    def stalled() -> bool:
        before, last[0] = last[0], sent[0]
        time.sleep(0.5)  # a stall is no progress over a while
        return before == sent[0]

    wait_for(stalled, what="the sender to stall")
    assert sent[0] < len(down) // 2
    laptop.resume()
    laptop.pump()
    assert hashlib.sha256(laptop.down).digest() == hashlib.sha256(down).digest()
    wait_for(lambda: target.results, what="the target's end")
    assert target.results == ["eof"]
    laptop.close()
    helper.stop(answer)


def test_control_channels_need_keepalives(helper: Helper) -> None:
    answer = helper.start(keepalive=0.3, outage=1.0)
    silent = control(answer["socket"])
    talking = control(answer["socket"])
    decoder = FrameDecoder()
    t0 = time.monotonic()
    for n in range(20):  # 3 s of ACKs every 0.15 s, each echoed
        talking.sendall(Ack(n).encode())
        got: list[Frame] = []
        while not got:
            got = decoder.feed(talking.recv(100))
        assert got == [Ack(n)]
        time.sleep(0.15)
    assert frames_until_close(silent) == []  # dropped after 3 x 0.3 s of silence
    assert time.monotonic() - t0 < 20
    assert not helper.gone(answer)
    talking.close()
    silent.close()
    wait_for(lambda: helper.gone(answer), what="the helper ends without laptop")
    assert list(helper.folder.iterdir()) == []


def test_a_refused_connection_to_the_target_is_refused(helper: Helper) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    answer = helper.start()
    with pytest.raises(Refused) as refused:
        Laptop(answer["socket"], 1).open(f"127.0.0.1:{port}")
    assert refused.value.code == Code.CONNECT
    with pytest.raises(Refused) as refused:
        Laptop(answer["socket"], 1).resume()
    assert refused.value.code == Code.CONNECT
    helper.stop(answer)


def test_the_program_is_one_python_38_source_with_no_input_in_its_command() -> None:
    import ast

    source = remote.program()
    ast.parse(source, feature_version=(3, 8))
    assert "from ." not in source and source.count("from __future__") == 1
    assert remote.command() == 'python3 -I -c "import sys;exec(sys.stdin.buffer.readline())"'
    with pytest.raises(ValueError):
        remote.command("python3; rm -rf ~")
    settings = remote.HelperSettings("t", SECRET)
    assert SECRET not in repr(settings)
    assert remote.parse_reply('{"socket": "/s", "pid": 3}\n')["pid"] == 3
    with pytest.raises(ValueError, match="did not start: nope"):
        remote.parse_reply('{"error": "nope"}')
