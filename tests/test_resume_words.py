"""What the front ends say of resumable connections (the panel's dom.ts says the same)."""

from __future__ import annotations

from jupyter_tunnel.cli import _resume_line
from jupyter_tunnel.humanize import resume_text


def test_an_outage_says_what_is_held() -> None:
    assert resume_text({"held": 3, "buffered": 2_100_000}) == \
        "3 connections held, 2.1 MB buffered"
    # a new connection waiting a moment for its link, the helper reached: no alarm
    assert resume_text({"held": 1, "buffered": 149, "helper_reached": True}) == \
        "connections resume after an outage"
    assert _resume_line({"held": 1, "connections": 1, "helper_reached": True}) == \
        "1 resumable connection(s), helper reached"
    assert resume_text({"held": 1, "buffered": 0}) == "1 connection held, 0 B buffered"
    assert _resume_line({"held": 1, "buffered": 0}) == \
        "1 connection held, 0 B buffered: they go on when the connection is back"


def test_otherwise_that_connections_resume_or_nothing() -> None:
    assert resume_text({"held": 0, "connections": 2}) == "connections resume after an outage"
    assert resume_text(None) == ""
    assert _resume_line(None) == "off"
    assert _resume_line({"held": 0, "connections": 2, "helper_reached": True}) == \
        "2 resumable connection(s), helper reached"
