"""What to reach and how: hops, tunnel specs, and parsing of user input.

Pure functions and frozen dataclasses; no I/O.  Every value that later reaches
a socket, a remote command or a file name is validated here first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from .errors import SpecError

_HOST_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_IPV6_RE = re.compile(r"^[0-9A-Fa-f:.]+(%[A-Za-z0-9_.-]+)?$")
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
NAME_MAX = 64


@dataclass(frozen=True)
class Hop:
    """One SSH host as the user named it: an ssh-config alias or a host name."""

    host: str
    user: str | None = None
    port: int | None = None

    def __str__(self) -> str:
        text = self.host if ":" not in self.host else f"[{self.host}]"
        if self.user:
            text = f"{self.user}@{text}"
        if self.port is not None:
            text = f"{text}:{self.port}"
        return text


@dataclass(frozen=True)
class TunnelSpec:
    """A request for a tunnel to a remote Jupyter server."""

    target: Hop
    #: jump hosts in the order they are connected, as with ``ssh -J``
    via: tuple[Hop, ...] = ()
    name: str | None = None
    #: the local port to listen on; 0 picks a free one
    local_port: int = 0
    #: the remote Jupyter's port, when several run; None picks the newest
    remote_port: int | None = None
    launch: bool = False
    #: OpenSSH client config to read; None means ``~/.ssh/config``
    ssh_config: str | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def chain(self) -> tuple[Hop, ...]:
        """All hops, first jump host first, target last."""
        return (*self.via, self.target)

    def default_name(self) -> str:
        """A tunnel name derived from the target's host."""
        host = self.target.host
        if ":" in host:  # an IPv6 address
            host = "ipv6-" + host.replace(":", "-")
        base = re.sub(r"[^A-Za-z0-9_.-]", "-", host).strip("-.") or "tunnel"
        if not base[0].isalnum():
            base = "t" + base
        return base[:NAME_MAX]


def check_host(host: str) -> str:
    """Validate a host name, alias or IP address and return it."""
    if not host:
        raise SpecError("empty host name")
    if host.startswith("-"):
        raise SpecError(f"invalid host name {host!r}: a host name cannot start with '-'")
    if len(host) > 253:
        raise SpecError(f"invalid host name {host[:40]!r}...: longer than 253 characters")
    if _HOST_RE.match(host) or (":" in host and _IPV6_RE.match(host)):
        return host
    raise SpecError(
        f"invalid host name {host!r}: use letters, digits, '.', '-' and '_' only "
        "(an ssh-config alias, a host name or an IP address)"
    )


def check_user(user: str) -> str:
    """Validate a login name and return it."""
    if not user or len(user) > 64 or not _USER_RE.match(user):
        raise SpecError(f"invalid user name {user!r}: use letters, digits, '.', '-' and '_' only")
    return user


def parse_port(value: object, what: str = "port", *, allow_zero: bool = False) -> int:
    """Parse a TCP port given as int or text; ``what`` names it in the message."""
    text = str(value).strip()
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not text.isdigit():
        raise SpecError(f"{what} must be a number from {low} to 65535, not {text!r}")
    port = int(text)
    if not low <= port <= 65535:
        raise SpecError(f"{what} must be a number from {low} to 65535, not {port}")
    return port


def check_name(name: str) -> str:
    """Validate a tunnel name (it becomes a file name in the registry)."""
    if not name or len(name) > NAME_MAX or not _NAME_RE.match(name):
        raise SpecError(
            f"invalid tunnel name {name!r}: up to {NAME_MAX} letters, digits, '.', '-' or '_', "
            "starting with a letter or digit"
        )
    return name


def parse_hop(text: str) -> Hop:
    """Parse ``host``, ``user@host``, ``user@host:port``, ``[v6]:port`` or ``ssh://…``."""
    raw = text.strip()
    if raw.startswith("ssh://"):
        raw = raw[len("ssh://") :].rstrip("/")
    if not raw:
        raise SpecError("empty host name")
    if raw.startswith("-"):
        raise SpecError(f"invalid host name {text!r}: a host name cannot start with '-'")
    if any(c.isspace() for c in raw):
        raise SpecError(f"invalid host name {text!r}: it contains white space")
    user: str | None = None
    if "@" in raw:
        user, _, raw = raw.rpartition("@")
        check_user(user)
    port: int | None = None
    if raw.startswith("["):
        end = raw.find("]")
        if end < 0:
            raise SpecError(f"invalid host {text!r}: missing ']'")
        host, rest = raw[1:end], raw[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise SpecError(f"invalid host {text!r}: unexpected {rest!r} after ']'")
            port = parse_port(rest[1:], f"port of {host}")
    elif raw.count(":") == 1:
        host, _, port_text = raw.partition(":")
        port = parse_port(port_text, f"port of {host or text}")
    else:
        host = raw
    return Hop(host=check_host(host), user=user, port=port)


def parse_via(values: Iterable[str] | str | None) -> tuple[Hop, ...]:
    """Parse jump hosts given as repeated and/or comma separated values (``ssh -J`` order)."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    hops: list[Hop] = []
    for value in values:
        for part in value.split(","):
            if not part.strip():
                raise SpecError(f"empty jump host in {value!r}")
            hops.append(parse_hop(part))
    return tuple(hops)


def parse_phrase(words: Iterable[str] | str) -> tuple[Hop, tuple[Hop, ...]]:
    """Parse ``beast via unicorn via gate`` into the target and its jump hosts.

    Jump hosts are listed in the order they are connected, as with ``ssh -J``:
    here unicorn first, then gate, then beast.
    """
    tokens = words.split() if isinstance(words, str) else [w for w in words if w]
    if not tokens:
        raise SpecError("no target given: say which host runs Jupyter, e.g. 'beast via unicorn'")
    if tokens[0].lower() == "via":
        raise SpecError("no target given before 'via': say 'beast via unicorn'")
    target = parse_hop(tokens[0])
    via: list[Hop] = []
    rest = tokens[1:]
    while rest:
        if rest[0].lower() != "via":
            raise SpecError(f"unexpected {rest[0]!r}: expected 'via HOST' after {tokens[0]!r}")
        if len(rest) < 2:
            raise SpecError("'via' must be followed by a host name")
        via.extend(parse_via(rest[1]))
        rest = rest[2:]
    return target, tuple(via)


def build_spec(
    target: str | Iterable[str],
    via: Iterable[str] | str | None = None,
    *,
    name: str | None = None,
    local_port: object = None,
    remote_port: object = None,
    launch: bool = False,
    ssh_config: str | None = None,
) -> TunnelSpec:
    """Build a validated :class:`TunnelSpec` from front-end input.

    ``target`` may itself be a phrase (``beast via unicorn``); its jump hosts
    come first, then those of ``via``.
    """
    hop, phrase_via = parse_phrase(target)
    spec = TunnelSpec(
        target=hop,
        via=phrase_via + parse_via(via),
        name=check_name(name) if name else None,
        local_port=0 if local_port in (None, "") else parse_port(local_port, "local port"),
        remote_port=None
        if remote_port in (None, "")
        else parse_port(remote_port, "remote port"),
        launch=bool(launch),
        ssh_config=ssh_config or None,
    )
    return spec
