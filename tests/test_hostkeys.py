"""known_hosts checking (pure logic on files)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import replace
from pathlib import Path

import pytest

from jupyter_tunnel import hostkeys
from jupyter_tunnel.errors import HostKeyError
from jupyter_tunnel.sshconfig import ResolvedHop

KEY_A = b"\x00\x00\x00\x0bssh-ed25519" + b"A" * 36
KEY_B = b"\x00\x00\x00\x0bssh-ed25519" + b"B" * 36


def b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


@pytest.fixture
def hop(tmp_path: Path) -> ResolvedHop:
    return ResolvedHop(alias="beast", hostname="10.0.0.7", port=2222, user="u",
                       known_hosts_files=(str(tmp_path / "known_hosts"),))


def test_fingerprint_matches_openssh_format() -> None:
    fp = hostkeys.fingerprint(KEY_A)
    assert fp.startswith("SHA256:") and not fp.endswith("=")


def test_known_unknown_changed(hop: ResolvedHop, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    assert hostkeys.check(hop, "ssh-ed25519", KEY_A) is hostkeys.KeyStatus.UNKNOWN
    kh.write_text(f"# comment\n[10.0.0.7]:2222 ssh-ed25519 {b64(KEY_A)}\n")
    assert hostkeys.check(hop, "ssh-ed25519", KEY_A) is hostkeys.KeyStatus.KNOWN
    assert hostkeys.check(hop, "ssh-ed25519", KEY_B) is hostkeys.KeyStatus.CHANGED
    # the same address on port 22 is another entry
    assert hostkeys.check(replace(hop, port=22), "ssh-ed25519", KEY_A) is \
        hostkeys.KeyStatus.UNKNOWN


def test_hashed_entries_and_revoked(hop: ResolvedHop, tmp_path: Path) -> None:
    salt = b"0123456789abcdefghij"
    digest = hmac.new(salt, b"[10.0.0.7]:2222", hashlib.sha1).digest()
    (tmp_path / "known_hosts").write_text(
        f"|1|{b64(salt)}|{b64(digest)} ssh-ed25519 {b64(KEY_A)}\n"
        f"@revoked * ssh-ed25519 {b64(KEY_B)}\n")
    assert hostkeys.check(hop, "ssh-ed25519", KEY_A) is hostkeys.KeyStatus.KNOWN
    assert hostkeys.check(hop, "ssh-ed25519", KEY_B) is hostkeys.KeyStatus.REVOKED


def test_verify_messages_name_hop_and_fingerprint(hop: ResolvedHop, tmp_path: Path) -> None:
    fp_b = hostkeys.fingerprint(KEY_B)
    with pytest.raises(HostKeyError) as info:
        hostkeys.verify(hop, "ssh-ed25519", KEY_B)
    assert "beast (10.0.0.7:2222)" in str(info.value) and fp_b in str(info.value)
    assert "not known" in str(info.value) and info.value.hop == "beast"
    (tmp_path / "known_hosts").write_text(f"[10.0.0.7]:2222 ssh-ed25519 {b64(KEY_A)}\n")
    with pytest.raises(HostKeyError) as info:
        hostkeys.verify(hop, "ssh-ed25519", KEY_B)
    assert "CHANGED" in str(info.value) and fp_b in str(info.value)
    assert "ssh-keygen -R '[10.0.0.7]:2222'" in str(info.value)


def test_accept_new_records_unknown_but_never_changed(hop: ResolvedHop, tmp_path: Path) -> None:
    hop = replace(hop, strict_host_key_checking="accept-new",
                  known_hosts_files=(str(tmp_path / "sub" / "kh"),))
    hostkeys.verify(hop, "ssh-ed25519", KEY_A)
    assert (tmp_path / "sub" / "kh").read_text() == f"[10.0.0.7]:2222 ssh-ed25519 {b64(KEY_A)}\n"
    assert (tmp_path / "sub" / "kh").stat().st_mode & 0o777 == 0o600
    hostkeys.verify(hop, "ssh-ed25519", KEY_A)
    with pytest.raises(HostKeyError, match="CHANGED"):
        hostkeys.verify(hop, "ssh-ed25519", KEY_B)


def test_unknown_markers_are_ignored_and_record_keeps_lines_apart(
        hop: ResolvedHop, tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text(f"@revoke [10.0.0.7]:2222 ssh-ed25519 {b64(KEY_A)}")  # typo marker, no newline
    assert hostkeys.check(hop, "ssh-ed25519", KEY_A) is hostkeys.KeyStatus.UNKNOWN
    hostkeys.record(hop, "ssh-ed25519", KEY_A)
    assert kh.read_text().splitlines()[1] == f"[10.0.0.7]:2222 ssh-ed25519 {b64(KEY_A)}"
    assert hostkeys.check(hop, "ssh-ed25519", KEY_A) is hostkeys.KeyStatus.KNOWN
