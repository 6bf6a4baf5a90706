"""Per-stream replay state of resumable streams (pure logic, no network)."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from jupyter_tunnel.resume.frames import (
    MAX_PAYLOAD,
    VERSION,
    Ack,
    Code,
    Data,
    Eof,
    Frame,
    FrameDecoder,
    Hello,
    Mode,
    ProtocolError,
    Reset,
    Welcome,
)
from jupyter_tunnel.resume.replay import (
    BackedReader,
    BackedWriter,
    Budget,
    Overflow,
    Stream,
)


def payload(frames: Sequence[Frame]) -> bytes:
    return b"".join(f.payload for f in frames if isinstance(f, Data))


# --- the send buffer -------------------------------------------------------------------


def test_writes_get_consecutive_offsets_and_frames_of_at_most_max_payload() -> None:
    writer = BackedWriter(limit=10 * MAX_PAYLOAD)
    first = writer.write(b"abc")
    big = bytes(range(256)) * (MAX_PAYLOAD // 100)
    second = writer.write(big)
    assert first == [Data(0, b"abc")]
    assert [f.offset for f in second] == [3, 3 + MAX_PAYLOAD, 3 + 2 * MAX_PAYLOAD]
    assert all(len(f.payload) <= MAX_PAYLOAD for f in second)
    assert payload(second) == big
    assert writer.sent == writer.buffered == 3 + len(big)
    assert writer.write(b"") == []


def test_ack_drops_and_replay_returns_exactly_the_rest() -> None:
    writer = BackedWriter(limit=1000)
    writer.write(b"0123456789")
    writer.write(b"abcdef")
    writer.ack(4)  # inside the first chunk
    assert writer.buffered == 12
    frames = writer.replay_from(12)  # inside the second chunk
    assert frames == [Data(12, b"cdef")]
    assert writer.buffered == 4
    assert writer.replay_from(12) == [Data(12, b"cdef")]  # the same count again is fine
    assert writer.replay_from(16) == []
    assert writer.buffered == 0


def test_replay_offsets_are_contiguous_after_partial_acks() -> None:
    writer = BackedWriter(limit=10_000)
    data = bytes(random.Random(1).randbytes(5000))
    for i in range(0, 5000, 333):
        writer.write(data[i : i + 333])
    writer.ack(1234)
    frames = writer.replay_from(2000)
    assert isinstance(frames[0], Data) and frames[0].offset == 2000
    assert payload(frames) == data[2000:]
    ends = [f.offset + len(f.payload) for f in frames if isinstance(f, Data)]
    assert [f.offset for f in frames[1:] if isinstance(f, Data)] == ends[:-1]


def test_ack_backwards_or_beyond_what_was_sent_is_a_protocol_error() -> None:
    writer = BackedWriter(limit=100)
    writer.write(b"hello")
    writer.ack(3)
    with pytest.raises(ProtocolError, match="back"):
        writer.ack(2)
    with pytest.raises(ProtocolError, match="back"):
        writer.replay_from(1)
    with pytest.raises(ProtocolError, match="only 5 sent"):
        writer.ack(6)  # the EOF position is not there before the EOF
    with pytest.raises(ProtocolError):
        writer.replay_from(6)
    assert writer.acked == 3 and writer.buffered == 2  # nothing changed
    writer.write_eof()
    writer.ack(6)
    assert writer.eof_acked
    with pytest.raises(ProtocolError):
        writer.ack(7)


def test_eof_is_replayed_until_acknowledged() -> None:
    writer = BackedWriter(limit=100)
    writer.write(b"xy")
    assert writer.write_eof() == Eof(2)
    assert writer.replay_from(0) == [Data(0, b"xy"), Eof(2)]
    assert writer.replay_from(2) == [Eof(2)]
    assert not writer.eof_acked
    assert writer.replay_from(3) == []
    assert writer.eof_acked
    with pytest.raises(ValueError):
        writer.write(b"more")


def test_stream_limit_overflow_raises_and_changes_nothing() -> None:
    writer = BackedWriter(limit=10)
    writer.write(b"1234567")
    assert writer.room == 3
    with pytest.raises(Overflow, match="stream buffer limit"):
        writer.write(b"abcd")
    assert (writer.sent, writer.buffered) == (7, 7)
    writer.write(b"abc")  # exactly the limit is fine
    writer.ack(5)
    assert writer.room == 5
    assert payload(writer.replay_from(5)) == b"67abc"


def test_tunnel_budget_is_shared_and_its_overflow_hits_the_writer_that_tried() -> None:
    budget = Budget(100)
    one = BackedWriter(limit=80, budget=budget)
    two = BackedWriter(limit=80, budget=budget)
    one.write(b"a" * 70)
    assert two.room == 30
    with pytest.raises(Overflow, match="tunnel buffer limit"):
        two.write(b"b" * 31)  # under its own limit, over the tunnel's
    assert two.sent == 0 and budget.used == 70
    two.write(b"b" * 30)
    assert budget.used == 100
    one.ack(50)
    assert budget.used == 50 and two.room == 50
    one.discard()  # a reset stream gives its buffer back
    assert budget.used == 30
    one.discard()
    one.ack(70)  # a late ACK after the reset must not give back twice
    assert budget.used == 30
    two.write_eof()
    two.ack(31)
    assert budget.used == 0


# --- the receive side ------------------------------------------------------------------


def test_reader_delivers_in_order_drops_duplicates_and_keeps_new_tails() -> None:
    reader = BackedReader(ack_every=1000)
    assert reader.receive(Data(0, b"hello")) == b"hello"
    assert reader.receive(Data(0, b"hello")) == b""
    assert reader.receive(Data(2, b"llo")) == b""
    assert reader.receive(Data(3, b"lo wor")) == b" wor"
    assert reader.received == 9


def test_reader_rejects_gaps() -> None:
    reader = BackedReader()
    reader.receive(Data(0, b"abc"))
    with pytest.raises(ProtocolError, match="gap"):
        reader.receive(Data(4, b"e"))
    with pytest.raises(ProtocolError):
        reader.receive(Eof(4))
    with pytest.raises(ProtocolError):
        reader.receive(Eof(2))  # an EOF before bytes already received
    assert reader.received == 3 and not reader.eof


def test_reader_eof() -> None:
    reader = BackedReader()
    reader.receive(Data(0, b"abc"))
    assert reader.receive(Eof(3)) == b""
    assert reader.eof and reader.received == 4
    assert reader.receive(Eof(3)) == b""  # replayed
    assert reader.receive(Data(1, b"bc")) == b""  # replayed
    with pytest.raises(ProtocolError):
        reader.receive(Data(3, b"d"))
    with pytest.raises(ProtocolError):
        reader.receive(Eof(5))


def test_ack_policy() -> None:
    reader = BackedReader(ack_every=10)
    reader.receive(Data(0, b"123456789"))
    assert not reader.ack_due and reader.unacked == 9
    reader.receive(Data(9, b"0"))
    assert reader.ack_due
    assert reader.take_count() == 10
    assert not reader.ack_due and reader.unacked == 0
    reader.receive(Eof(10))
    assert reader.ack_due  # an EOF is acknowledged at once
    assert reader.take_count() == 11
    assert not reader.ack_due


def test_an_ack_waits_for_data_to_ride_with_until_its_delay() -> None:
    reader = BackedReader(ack_every=10, ack_delay=0.2)
    assert reader.ack_at is None and reader.riding_ack() == []
    reader.receive(Data(0, b"abc"), now=5.0)
    reader.receive(Data(3, b"de"), now=5.1)  # the oldest byte sets the time
    assert reader.ack_at == pytest.approx(5.2)
    assert not reader.ack_wanted(5.19) and reader.ack_wanted(5.2)
    assert reader.riding_ack() == [Ack(5)]  # DATA is going out: the ACK goes with it
    assert reader.ack_at is None and not reader.ack_wanted(99.0)
    reader.receive(Data(0, b"abcde"), now=6.0)  # a replayed duplicate: nothing to ack
    assert reader.ack_at is None
    reader.receive(Data(5, b"f"), now=7.0)
    assert reader.ack_at == pytest.approx(7.2)
    reader.receive(Data(6, b"ghijklmnop"), now=7.01)
    assert reader.ack_wanted(7.01)  # an ACK's worth: at once
    assert reader.take_count() == 16
    reader.receive(Eof(16), now=8.0)
    assert reader.ack_wanted(8.0)  # the EOF: at once
    assert reader.riding_ack() == [Ack(17)] and reader.ack_at is None


# --- a stream ----------------------------------------------------------------------------


def test_outage_timing_uses_the_time_given() -> None:
    stream = Stream(1, limit=100)
    assert not stream.outage_exceeded(15.0, now=1e9)
    stream.hold(now=100.0)
    stream.hold(now=105.0)  # still the same outage
    assert stream.held_since == 100.0
    assert not stream.outage_exceeded(15.0, now=115.0)
    assert stream.outage_exceeded(15.0, now=115.5)
    stream.resume(0)
    assert stream.held_since is None
    assert not stream.outage_exceeded(15.0, now=1e9)


def test_done_needs_both_eofs_delivered_and_acknowledged() -> None:
    stream = Stream(1, limit=100)
    stream.writer.write(b"q")
    stream.writer.write_eof()
    stream.reader.receive(Data(0, b"a"))
    stream.reader.receive(Eof(1))
    assert not stream.done  # ours not acknowledged, theirs not acked
    stream.on_ack(1)
    assert not stream.done  # the byte, not the EOF
    stream.on_ack(2)
    assert not stream.done  # their EOF not acked yet
    assert stream.reader.take_count() == 2
    assert stream.done


def test_a_reset_stream_is_never_done() -> None:
    budget = Budget(100)
    stream = Stream(1, limit=100, budget=budget)
    stream.writer.write(b"abc")
    stream.writer.write_eof()
    stream.reader.receive(Eof(0))
    stream.reader.take_count()
    frame = stream.reset(Code.OUTAGE, "held for 15 min")
    assert frame == Reset(Code.OUTAGE, "held for 15 min")
    stream.on_ack(4)
    assert not stream.done
    assert budget.used == 0
    with pytest.raises(ValueError):
        stream.resume(4)


def test_overflow_becomes_a_reset_on_the_wire() -> None:
    stream = Stream(1, limit=4)
    with pytest.raises(Overflow) as exc:
        stream.writer.write(b"12345")
    frame = stream.overflow(exc.value)
    assert isinstance(frame, Reset) and frame.code == Code.OVERFLOW
    (decoded,) = FrameDecoder().feed(frame.encode())
    assert decoded == frame


# --- two endpoints over a link that is cut at random points -------------------------------


class Endpoint:
    """One side: an application writing ``source`` and reading what arrives."""

    def __init__(self, source: bytes, rng: random.Random, budget: Budget) -> None:
        self.rng = rng
        self.source = source
        self.pos = 0
        self.got = bytearray()
        self.stream = Stream(7, limit=150_000, budget=budget, ack_every=rng.choice([1, 5000]))
        self.decoder = FrameDecoder()

    def produce(self) -> list[Frame]:
        """The application writes what the buffers allow (back-pressure, never overflow)."""
        writer = self.stream.writer
        n = min(self.rng.randint(1, 3 * MAX_PAYLOAD), len(self.source) - self.pos, writer.room)
        frames: list[Frame] = []
        if n > 0:
            frames += writer.write(self.source[self.pos : self.pos + n])
            self.pos += n
        if self.pos == len(self.source) and not writer.eof:
            frames.append(writer.write_eof())
        # what was received is acknowledged in front of the DATA and EOF going out
        return [*self.stream.reader.riding_ack(), *frames] if frames else []

    def consume(self, chunk: bytes) -> list[Frame]:
        """Bytes from the link; returns the ACK to send, if one is due."""
        for frame in self.decoder.feed(chunk):
            if isinstance(frame, Data | Eof):
                self.got += self.stream.reader.receive(frame)
            elif isinstance(frame, Ack):
                self.stream.on_ack(frame.received)
            else:
                raise AssertionError(f"unexpected {frame}")
        return self.ack() if self.stream.reader.ack_due else []

    def ack(self) -> list[Frame]:
        if not self.stream.reader.unacked:
            return []
        return [Ack(self.stream.reader.take_count())]


def exchange(seed: int, size_a: int, size_b: int) -> tuple[int, int]:
    """Run both directions to a clean end through cuts; return (cuts, failed handshakes)."""
    rng = random.Random(seed)
    budget = Budget(250_000)  # under the two streams' limits together: the budget matters
    laptop = Endpoint(rng.randbytes(size_a), rng, budget)
    helper = Endpoint(rng.randbytes(size_b), rng, budget)
    to_helper, to_laptop = bytearray(), bytearray()
    connected, cuts, failed, now = True, 0, 0, 0.0

    def send(wire: bytearray, frames: list[Frame]) -> None:
        if connected:  # frames written during an outage stay only in the buffers
            wire += b"".join(f.encode() for f in frames)

    def deliver(wire: bytearray, to: Endpoint, back: bytearray) -> None:
        n = rng.choice([rng.randint(1, 30), rng.randint(1, 10_000)])  # cuts land mid-frame
        chunk = bytes(wire[:n])
        del wire[:n]
        send(back, to.consume(chunk))

    for _ in range(200_000):
        if laptop.stream.done and helper.stream.done:
            break
        now += 0.01
        action = rng.random()
        if not connected:
            if action < 0.3:
                send(to_helper, laptop.produce())
                send(to_laptop, helper.produce())
                continue
            # reattach: HELLO, WELCOME, then each side replays what the other lacks
            hello = Hello(VERSION, Mode.RESUME, 7, laptop.stream.reader.take_count(), b"s")
            (got,) = FrameDecoder().feed(hello.encode())
            assert isinstance(got, Hello) and got.stream_id == helper.stream.stream_id
            replay_b = helper.stream.resume(got.received)
            welcome = Welcome(helper.stream.reader.take_count())
            if rng.random() < 0.2:  # cut before the WELCOME arrived
                failed += 1
                helper.stream.hold(now)
                continue
            (got,) = FrameDecoder().feed(welcome.encode())
            assert isinstance(got, Welcome)
            replay_a = laptop.stream.resume(got.received)
            connected = True
            laptop.decoder, helper.decoder = FrameDecoder(), FrameDecoder()
            send(to_helper, replay_a)
            send(to_laptop, replay_b)
        elif action < 0.03:
            connected = False  # the cut: whatever was in flight is lost, frames cut included
            cuts += 1
            to_helper.clear()
            to_laptop.clear()
            laptop.stream.hold(now)
            helper.stream.hold(now)
        elif action < 0.2:
            send(to_helper, laptop.produce())
        elif action < 0.37:
            send(to_laptop, helper.produce())
        elif action < 0.6 and to_helper:
            deliver(to_helper, helper, to_laptop)
        elif action < 0.83 and to_laptop:
            deliver(to_laptop, laptop, to_helper)
        elif action < 0.9:  # no DATA to ride with for ACK_DELAY: acknowledge alone
            send(to_laptop, helper.ack())
            send(to_helper, laptop.ack())
    else:
        raise AssertionError("the streams never ended")

    assert bytes(helper.got) == laptop.source
    assert bytes(laptop.got) == helper.source
    assert budget.used == 0
    assert laptop.stream.writer.buffered == helper.stream.writer.buffered == 0
    return cuts, failed


@pytest.mark.parametrize("seed", range(8))
def test_lossy_link_delivers_both_directions_exactly(seed: int) -> None:
    rng = random.Random(1000 + seed)
    cuts, _ = exchange(seed, rng.randint(100_000, 600_000), rng.randint(0, 300_000))
    assert cuts >= 3  # the run did go through outages


def test_lossy_link_with_empty_streams_still_exchanges_both_eofs() -> None:
    cuts = sum(exchange(seed, 0, 0)[0] for seed in range(20))
    assert cuts > 0


def test_lossy_link_handshake_cuts_are_exercised() -> None:
    results = [exchange(seed, 200_000, 200_000) for seed in range(100, 104)]
    assert sum(failed for _, failed in results) > 0
