"""Parsing and validation of what people type (pure logic)."""

from __future__ import annotations

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
