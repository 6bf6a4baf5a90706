"""The wire format of resumable streams (pure logic, no network)."""

from __future__ import annotations

import ast
import glob
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from jupyter_tunnel.resume import frames
from jupyter_tunnel.resume.frames import (
    MAX_FRAME,
    MAX_PAYLOAD,
    VERSION,
    Ack,
    Bound,
    Code,
    Data,
    Eof,
    Frame,
    FrameDecoder,
    FrameError,
    Hello,
    Listen,
    Mode,
    Offer,
    ProtocolError,
    Refuse,
    Reset,
    VersionError,
    Welcome,
    secret_ok,
    split_target,
)

SAMPLES: list[Frame] = [
    Hello(VERSION, Mode.NEW, 7, 0, b"s" * 32, "localhost:8888"),
    Hello(VERSION, Mode.NEW, 2**64 - 1, 0, b"\x00\xff", "/run/user/1000/jupyter.sock"),
    Hello(VERSION, Mode.RESUME, 7, 123456789012, b"k" * 64),
    Welcome(0),
    Welcome(2**64 - 1),
    Refuse(Code.SECRET, "wrong secret"),
    Refuse(Code.CONNECT, ""),
    Data(0, b"x"),
    Data(2**40, bytes(range(256)) * 256),
    Ack(65536),
    Eof(0),
    Eof(12345),
    Reset(Code.OVERFLOW, "stream buffer limit of 16 bytes exceeded — ünïcode"),
    Listen(1, 0),
    Listen(2**32 - 1, 65535, "::1"),
    Bound(1, 8888),
    Bound(3, 0, Code.CONNECT, "port 22: Address already in use"),
    Offer(1, frames.HELPER_IDS),
    Offer(7, 2**64 - 1),
]

#: a Python 3.8 to run the embedded source with, when pyenv has one
PYTHON38 = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")))
SOURCES = [Path(frames.__file__), Path(frames.__file__).with_name("replay.py")]


def hello_head(*fields: int) -> bytes:
    """The fixed part of a HELLO body after the version: mode, id, received, secret length."""
    return struct.pack(">HBQQB", VERSION, *fields)


def raw(kind: int, body: bytes) -> bytes:
    return struct.pack(">BI", kind, len(body)) + body


@pytest.mark.parametrize("frame", SAMPLES, ids=lambda f: type(f).__name__)
def test_round_trip(frame: Frame) -> None:
    assert FrameDecoder().feed(frame.encode()) == [frame]


def test_every_type_has_a_sample() -> None:
    assert {type(f) for f in SAMPLES} == set(frames.FRAME_TYPES.values())


def test_decoding_from_one_byte_chunks() -> None:
    wire = b"".join(f.encode() for f in SAMPLES)
    decoder = FrameDecoder()
    out: list[Frame] = []
    for i in range(len(wire)):
        out += decoder.feed(wire[i : i + 1])
        assert decoder.pending < MAX_FRAME
    assert out == SAMPLES
    assert decoder.pending == 0
    decoder.finish()


def test_decoding_many_frames_in_one_chunk_and_split_headers() -> None:
    wire = b"".join(f.encode() for f in SAMPLES)
    decoder = FrameDecoder()
    assert decoder.feed(wire[:3]) == []  # inside the first header
    assert decoder.feed(wire[3:]) == SAMPLES


def test_max_payload_is_accepted_one_more_byte_is_not() -> None:
    full = Data(5, b"a" * MAX_PAYLOAD)
    assert FrameDecoder().feed(full.encode()) == [full]
    with pytest.raises(ValueError):
        Data(5, b"a" * (MAX_PAYLOAD + 1)).encode()
    with pytest.raises(FrameError, match="at most"):
        FrameDecoder().feed(raw(Data.TYPE, b"\0" * (8 + MAX_PAYLOAD + 1)))


def test_oversized_length_is_refused_from_the_header_alone() -> None:
    # a peer announcing 4 GiB must be refused before anything is buffered
    decoder = FrameDecoder()
    with pytest.raises(FrameError, match="at most"):
        decoder.feed(struct.pack(">BI", Data.TYPE, 2**32 - 1))
    assert decoder.pending <= 5


@pytest.mark.parametrize("kind", [0, 11, 255])
def test_unknown_type(kind: int) -> None:
    with pytest.raises(FrameError, match="unknown frame type"):
        FrameDecoder().feed(raw(kind, b""))


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (Ack.TYPE, b"\0" * 7),
        (Ack.TYPE, b"\0" * 9),
        (Welcome.TYPE, b""),
        (Eof.TYPE, b"\0" * 4),
        (Data.TYPE, b"\0" * 8),  # no payload
        (Data.TYPE, struct.pack(">Q", 2**64 - 1) + b"xy"),  # ends beyond the last position
        (Reset.TYPE, b"\x01"),
        (Reset.TYPE, b"\x01\x05abc"),  # reason shorter than said
        (Refuse.TYPE, b"\x01\x01ab"),  # reason longer than said
        (Hello.TYPE, struct.pack(">H", VERSION) + b"\0" * 8),  # too short
        # NEW without a target
        (Hello.TYPE, hello_head(0, 1, 0, 1) + b"s" + struct.pack(">H", 0)),
        # RESUME with a target
        (Hello.TYPE, hello_head(1, 1, 0, 1) + b"s" + struct.pack(">H", 1) + b"x"),
        # NEW claiming bytes received
        (Hello.TYPE, hello_head(0, 1, 5, 1) + b"s" + struct.pack(">H", 1) + b"x"),
        # unknown mode
        (Hello.TYPE, hello_head(9, 1, 0, 1) + b"s" + struct.pack(">H", 0)),
        # empty secret
        (Hello.TYPE, hello_head(1, 1, 0, 0) + struct.pack(">H", 0)),
        # target not UTF-8
        (Hello.TYPE, hello_head(0, 1, 0, 1) + b"s" + struct.pack(">H", 1) + b"\xff"),
        # target length beyond the body
        (Hello.TYPE, hello_head(0, 1, 0, 1) + b"s" + struct.pack(">H", 9) + b"x"),
    ],
)
def test_malformed_bodies(kind: int, body: bytes) -> None:
    with pytest.raises(FrameError) as exc:
        FrameDecoder().feed(raw(kind, body))
    assert not isinstance(exc.value, VersionError)


def test_another_version_is_told_apart_from_garbage() -> None:
    # a later version may change the rest of HELLO: only its first field is read
    with pytest.raises(VersionError) as exc:
        FrameDecoder().feed(raw(Hello.TYPE, struct.pack(">H", VERSION + 1) + b"whatever"))
    assert exc.value.version == VERSION + 1
    hello = Hello(VERSION + 1, Mode.RESUME, 1, 0, b"s")
    with pytest.raises(VersionError):
        FrameDecoder().feed(hello.encode())


def test_a_broken_decoder_stays_broken() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError):
        decoder.feed(raw(99, b""))
    with pytest.raises(FrameError):
        decoder.feed(Ack(1).encode())  # a valid frame after garbage is not trusted
    with pytest.raises(FrameError):
        decoder.finish()


@pytest.mark.parametrize("cut", [1, 4, 5, 6, 12])
def test_truncated_at_end(cut: int) -> None:
    decoder = FrameDecoder()
    assert decoder.feed(Ack(1).encode() + Data(0, b"payload").encode()[:cut]) == [Ack(1)]
    with pytest.raises(FrameError, match="inside a frame"):
        decoder.finish()


def test_frame_errors_are_protocol_errors() -> None:
    # the caller resets on ProtocolError, malformed bytes included
    assert issubclass(FrameError, ProtocolError)


def test_encoding_refuses_what_decoding_would() -> None:
    with pytest.raises(ValueError):
        Data(0, b"").encode()
    with pytest.raises(ValueError):
        Hello(VERSION, Mode.NEW, 1, 0, b"", "h:1").encode()
    with pytest.raises(ValueError):
        Hello(VERSION, Mode.NEW, 1, 0, b"s" * 65, "h:1").encode()


def test_long_reason_is_cut_and_still_decodes() -> None:
    (frame,) = FrameDecoder().feed(Reset(Code.PROTOCOL, "é" * 300).encode())
    assert isinstance(frame, Reset)
    assert frame.code == Code.PROTOCOL
    assert frame.reason.startswith("é" * 50)
    assert len(frame.reason.encode()) <= frames.MAX_REASON


def test_secret_comparison() -> None:
    assert secret_ok(b"abc", b"abc")
    assert not secret_ok(b"abc", b"abd")
    assert not secret_ok(b"abc", b"ab")


@pytest.mark.parametrize(
    ("target", "parsed"),
    [
        ("localhost:8888", ("localhost", 8888)),
        ("10.0.0.7:22", ("10.0.0.7", 22)),
        ("[::1]:8888", ("::1", 8888)),
        ("/run/jupyter.sock", "/run/jupyter.sock"),
    ],
)
def test_split_target(target: str, parsed: object) -> None:
    assert split_target(target) == parsed


@pytest.mark.parametrize("target", ["localhost", "host:", ":80", "host:0", "host:70000", "rel/x"])
def test_split_target_refuses(target: str) -> None:
    with pytest.raises(ValueError):
        split_target(target)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_embeddable_source_is_python_38_and_stdlib_only(path: Path) -> None:
    """frames.py (and replay.py) go to a remote with Python 3.8 and nothing installed."""
    tree = ast.parse(path.read_text(), feature_version=(3, 8))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # replay.py may import frames.py, which the helper embeds before it
                assert path.name == "replay.py" and node.module == "frames", ast.dump(node)
                continue
            names = [node.module or ""]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            assert top in sys.stdlib_module_names, f"{path.name} imports {name}"
            assert top != "jupyter_tunnel"
    # annotations such as ``bytes | None`` are only valid on 3.8 as unevaluated strings
    future = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
    assert any(a.name == "annotations" for n in future for a in n.names)


def test_feature_version_check_can_fail() -> None:
    with pytest.raises(SyntaxError):
        ast.parse("match x:\n    case 1: pass\n", feature_version=(3, 8))


def embedded_source() -> str:
    """frames.py then replay.py as one program, the way the remote helper carries them."""
    replay = SOURCES[1].read_text()
    replay = replay.replace("from __future__ import annotations\n", "")
    replay = replay.replace("from .frames import", "# from .frames import")
    return SOURCES[0].read_text() + "\n" + replay


CHECK = """
s = Stream(1, 1000)
wire = b"".join(f.encode() for f in s.writer.write(b"hello") + [s.writer.write_eof()])
wire += Hello(VERSION, Mode.RESUME, 1, 3, b"secret").encode()
got = FrameDecoder().feed(wire)
assert [type(f).__name__ for f in got] == ["Data", "Eof", "Hello"], got
assert got[0].payload == b"hello" and got[2].received == 3
assert [f.name for f in fields(Welcome)] == ["received"]
assert [f.name for f in fields(Reset)] == ["code", "reason"]
print("ok")
"""


def test_embedded_source_runs_as_one_program(tmp_path: Path) -> None:
    program = embedded_source() + "\nfrom dataclasses import fields\n" + CHECK
    script = tmp_path / "helper.py"
    script.write_text(program)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.stdout == "ok\n", out.stderr


@pytest.mark.skipif(not PYTHON38, reason="no Python 3.8 on this machine")
def test_embedded_source_runs_on_python_38(tmp_path: Path) -> None:
    program = embedded_source() + "\nfrom dataclasses import fields\n" + CHECK
    script = tmp_path / "helper.py"
    script.write_text(program)
    out = subprocess.run(
        [PYTHON38[0], str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.stdout == "ok\n", out.stderr


def test_listen_and_offer_refuse_malformed_bodies() -> None:
    with pytest.raises(FrameError, match="LISTEN bind of a wrong size"):
        FrameDecoder().feed(raw(Listen.TYPE, struct.pack(">IHB", 1, 0, 0)))
    with pytest.raises(FrameError, match="below the helper's ids"):
        FrameDecoder().feed(raw(Offer.TYPE, struct.pack(">IQ", 1, 5)))
    with pytest.raises(FrameError, match="BOUND reason of a wrong size"):
        FrameDecoder().feed(raw(Bound.TYPE, struct.pack(">IHBB", 1, 0, 6, 9) + b"x"))
