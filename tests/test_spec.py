"""Parsing and validation of what people type (pure logic)."""

from __future__ import annotations

import re

import pytest

from jupyter_tunnel.errors import SpecError
from jupyter_tunnel.spec import Hop, build_spec, parse_hop, parse_phrase, parse_port, parse_via


@pytest.mark.parametrize(
    ("text", "hop"),
    [
        ("beast", Hop("beast")),
        ("alice@beast", Hop("beast", "alice")),
        ("alice@beast.example.org:2222", Hop("beast.example.org", "alice", 2222)),
        ("10.0.0.7:22", Hop("10.0.0.7", None, 22)),
        ("[fe80::1]:2200", Hop("fe80::1", None, 2200)),
        ("bob@[::1]", Hop("::1", "bob")),
        ("ssh://carol@gate:2022", Hop("gate", "carol", 2022)),
        ("my_host-1", Hop("my_host-1")),
    ],
)
def test_parse_hop(text: str, hop: Hop) -> None:
    assert parse_hop(text) == hop


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("-oProxyCommand=touch /tmp/x", "cannot start with"),
        ("-oProxyCommand=id", "cannot start with '-'"),
        ("a;b", "invalid host name 'a;b'"),
        ("a b", "white space"),
        ("a$(id)", "invalid host name"),
        ("beast:0", "from 1 to 65535, not 0"),
        ("beast:65536", "not 65536"),
        ("beast:abc", "not 'abc'"),
        ("-x@beast", "cannot start with"),
        ("x-@be/ast", "invalid host name"),
        ("a$b@beast", "invalid user name"),
        ("al ice@beast", "white space"),
        ("", "empty host name"),
        ("[::1", "missing ']'"),
    ],
)
def test_parse_hop_rejects(text: str, words: str) -> None:
    with pytest.raises(SpecError, match=None) as info:
        parse_hop(text)
    assert words in str(info.value)


def test_via_is_in_connection_order_and_accepts_commas() -> None:
    assert parse_via(["gate,unicorn", "pony"]) == (Hop("gate"), Hop("unicorn"), Hop("pony"))
    with pytest.raises(SpecError, match="empty jump host"):
        parse_via(["gate,,unicorn"])


def test_phrase() -> None:
    assert parse_phrase("beast via unicorn via gate") == (
        Hop("beast"), (Hop("unicorn"), Hop("gate")))
    assert parse_phrase(["beast"]) == (Hop("beast"), ())
    for bad, words in [("", "no target"), ("via unicorn", "before 'via'"),
                       ("beast via", "followed by a host"), ("beast over unicorn", "'over'")]:
        with pytest.raises(SpecError) as info:
            parse_phrase(bad)
        assert words in str(info.value)


@pytest.mark.parametrize("value", ["0", "65536", "abc", "-1", "1.5", True])
def test_ports_rejected(value: object) -> None:
    with pytest.raises(SpecError, match="local port must be a number from 1 to 65535"):
        build_spec("beast", local_port=value)


def test_port_accepts_ints_and_text() -> None:
    assert parse_port("8888") == 8888
    assert parse_port(22) == 22


def test_build_spec_combines_phrase_and_via() -> None:
    spec = build_spec("beast via unicorn", ["gate"], name="b1", local_port="9999",
                      remote_port=8890, launch=True)
    assert spec.chain == (Hop("unicorn"), Hop("gate"), Hop("beast"))
    assert (spec.name, spec.local_port, spec.remote_port, spec.launch) == ("b1", 9999, 8890, True)
    assert spec.default_name() == "beast"


@pytest.mark.parametrize("name", ["../x", "a/b", "-a", "x" * 65, "a b"])
def test_bad_names(name: str) -> None:
    with pytest.raises(SpecError, match="invalid tunnel name"):
        build_spec("beast", name=name)


@pytest.mark.parametrize(("text", "remote", "shown"), [
    ("6006:localhost:6006", False, "6006:localhost:6006"),
    ("localhost:6006:127.0.0.1:6006", False, "6006:127.0.0.1:6006"),
    ("0:[::1]:8888", False, "0:[::1]:8888"),
    ("1313:localhost:8000", True, "1313:localhost:8000"),
    ("0.0.0.0:1313:localhost:8000", True, "0.0.0.0:1313:localhost:8000"),
])
def test_parse_forward(text: str, remote: bool, shown: str) -> None:
    from jupyter_tunnel.spec import parse_forward

    forward = parse_forward(text, remote=remote)
    assert str(forward) == shown and forward.remote is remote


@pytest.mark.parametrize(("text", "words"), [
    ("6006", "expected PORT:HOST:HOSTPORT"),
    ("1:2:3:4:5", "expected PORT:HOST:HOSTPORT"),
    ("10.0.0.1:80:h:80", "listen on 127.0.0.1 only"),
    ("80:-oProxyCommand=x:80", "cannot start with '-'"),
    ("80:a;b:80", "invalid host name"),
    ("99999:h:80", "from 0 to 65535"),
    ("80:h:", "destination port"),
])
def test_parse_forward_refuses(text: str, words: str) -> None:
    from jupyter_tunnel.spec import parse_forward

    with pytest.raises(SpecError, match=re.escape(words)):
        parse_forward(text)


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    import random

    from jupyter_tunnel.supervise import backoff

    rng = random.Random(1)
    for attempt, low, high in [(1, 0.5, 1.0), (2, 1.0, 2.0), (3, 2.0, 4.0), (20, 15.0, 30.0)]:
        waits = [backoff(attempt, 30.0, rng) for _ in range(200)]
        assert low <= min(waits) and max(waits) <= high
        assert max(waits) - min(waits) > (high - low) / 2  # jittered, not in lockstep
