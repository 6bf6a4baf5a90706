"""Host key checking against known_hosts, the way OpenSSH does it.

The caller hands over the key a server presented (type and blob); this module
says whether it is known, unknown or changed, and can record a new key when
the config asks for ``StrictHostKeyChecking accept-new``.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import HostKeyError
from .sshconfig import ResolvedHop, match_patterns


class KeyStatus(enum.Enum):
    """The verdict on a presented host key."""

    KNOWN = "known"
    UNKNOWN = "unknown"
    CHANGED = "changed"
    REVOKED = "revoked"


@dataclass(frozen=True)
class KnownKey:
    """One known_hosts line that applies to a host."""

    keytype: str
    blob: bytes
    file: str
    line: int
    revoked: bool = False


def fingerprint(blob: bytes) -> str:
    """OpenSSH's SHA256 fingerprint of a public key blob."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _host_matches(field: str, name: str) -> bool:
    if field.startswith("|1|"):
        try:
            _, _, salt64, hash64 = field.split("|", 3)
            salt, want = base64.b64decode(salt64), base64.b64decode(hash64)
        except (ValueError, binascii.Error):
            return False
        got = hmac.new(salt, name.encode(), hashlib.sha1).digest()
        return hmac.compare_digest(got, want)
    return match_patterns([field], name)


def known_keys(files: tuple[str, ...], name: str) -> list[KnownKey]:
    """Every key in ``files`` recorded for ``name`` (``host`` or ``[host]:port``)."""
    found: list[KnownKey] = []
    for file in files:
        try:
            text = Path(file).read_text(errors="replace")
        except OSError:
            continue
        for number, raw in enumerate(text.splitlines(), 1):
            parts = raw.split()
            if not parts or parts[0].startswith("#"):
                continue
            marker = None
            if parts[0].startswith("@"):
                marker, parts = parts[0], parts[1:]
                if marker != "@revoked":  # @cert-authority and unknown markers: not host keys
                    continue
            if len(parts) < 3 or not _host_matches(parts[0], name):
                continue
            try:
                blob = base64.b64decode(parts[2], validate=True)
            except (ValueError, binascii.Error):
                continue
            found.append(KnownKey(parts[1], blob, file, number, marker == "@revoked"))
    return found


def check(hop: ResolvedHop, keytype: str, blob: bytes) -> KeyStatus:
    """Judge the key ``hop`` presented against its known_hosts files."""
    keys = known_keys(hop.known_hosts_files + hop.global_known_hosts_files, hop.known_hosts_name)
    if any(k.revoked and k.blob == blob for k in keys):
        return KeyStatus.REVOKED
    if any(not k.revoked and k.blob == blob for k in keys):
        return KeyStatus.KNOWN
    if any(not k.revoked and k.keytype == keytype for k in keys):
        return KeyStatus.CHANGED
    return KeyStatus.UNKNOWN


def preferred_types(hop: ResolvedHop) -> list[str]:
    """Key types already known for ``hop``, so the server is asked for one of those first."""
    keys = known_keys(hop.known_hosts_files + hop.global_known_hosts_files, hop.known_hosts_name)
    types: list[str] = []
    for key in keys:
        if not key.revoked and key.keytype not in types:
            types.append(key.keytype)
    return types


def verify(hop: ResolvedHop, keytype: str, blob: bytes) -> bool:
    """Accept the key or raise :class:`HostKeyError` naming the hop and fingerprint.

    ``StrictHostKeyChecking accept-new`` (and ``no``, read the same way: a key is
    never accepted silently when it changed) records an unknown key; the result says
    whether it did, so that the caller can tell the user, as ssh does.
    """
    status = check(hop, keytype, blob)
    fp = fingerprint(blob)
    files = hop.known_hosts_files[0] if hop.known_hosts_files else "~/.ssh/known_hosts"
    if status is KeyStatus.KNOWN:
        return False
    if status is KeyStatus.REVOKED:
        raise HostKeyError(
            f"host key for {hop.label} is marked as revoked in known_hosts: {keytype} {fp}; "
            "refusing to connect",
            hop=hop.alias,
        )
    if status is KeyStatus.CHANGED:
        raise HostKeyError(
            f"host key for {hop.label} has CHANGED: the server now presents {keytype} {fp}, "
            f"which does not match {files}. Someone could be intercepting the connection, or "
            "the host was reinstalled. If you know the change is expected, remove the old "
            f"line with: ssh-keygen -R '{hop.known_hosts_name}' -f {files}",
            hop=hop.alias,
        )
    if hop.strict_host_key_checking in ("accept-new", "no"):
        record(hop, keytype, blob)
        return True
    ssh = f"ssh -F {hop.config_file} {hop.alias}" if hop.config_file else f"ssh {hop.alias}"
    raise HostKeyError(
        f"host key for {hop.label} is not known: {keytype} {fp}. Check this fingerprint with "
        f"the host's administrator, then connect once with '{ssh}' to add it to "
        f"{files}, or set 'StrictHostKeyChecking accept-new' for this host in your ssh config",
        hop=hop.alias,
    )


def record(hop: ResolvedHop, keytype: str, blob: bytes) -> None:
    """Append a new key for ``hop`` to its first user known_hosts file."""
    if not hop.known_hosts_files:
        raise HostKeyError(f"no UserKnownHostsFile to record the key of {hop.label}", hop=hop.alias)
    path = Path(hop.known_hosts_files[0])
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = f"{hop.known_hosts_name} {keytype} {base64.b64encode(blob).decode()}\n"
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+") as fh:
        size = os.fstat(fd).st_size
        if size:
            fh.seek(size - 1)
            if fh.read(1) != "\n":
                line = "\n" + line
        fh.write(line)
