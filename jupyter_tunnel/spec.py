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
_BASE_URL_RE = re.compile(r"^/[A-Za-z0-9._~/-]*/$")
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
class Forward:
    """An extra forward: ``-L`` (local) or ``-R`` (reverse, ``remote`` True).

    A local forward listens on 127.0.0.1:``listen_port`` here and reaches ``host:port`` as
    the target sees it; a reverse forward listens on ``bind:listen_port`` on the target and
    reaches ``host:port`` as this machine sees it.
    """

    listen_port: int
    host: str
    port: int
    remote: bool = False
    bind: str = "127.0.0.1"

    def __str__(self) -> str:
        def h(host: str) -> str:
            return f"[{host}]" if ":" in host else host

        bind = f"{h(self.bind)}:" if self.remote and self.bind != "127.0.0.1" else ""
        return f"{bind}{self.listen_port}:{h(self.host)}:{self.port}"


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
    #: extra local forwards (``--forward``) and reverse forwards (``--reverse``)
    forwards: tuple[Forward, ...] = ()
    reverse: tuple[Forward, ...] = ()
    #: find the remote Jupyter and forward to it (False: ``--no-jupyter``)
    jupyter: bool = True
    #: with ``launch``: a base URL prefix; the launched server gets ``base_url`` =
    #: this + the tunnel's final name + "/" (so a Jupyter server can serve it there)
    serve_under: str | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False)

    def base_url_for(self, name: str) -> str | None:
        """The remote base URL wanted for a tunnel of this name (None: any will do)."""
        if not (self.launch and self.jupyter and self.serve_under):
            return None
        return check_base_url(self.serve_under + check_name(name) + "/")

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


def check_base_url(url: str) -> str:
    """Validate a Jupyter base URL path (``/a/b/``); it reaches a remote command's
    arguments, so only a strict set of characters and no ``.``/``..`` segments."""
    if (len(url) > 512 or not _BASE_URL_RE.match(url) or "//" in url
            or any(part in (".", "..") for part in url.split("/"))):
        raise SpecError(
            f"invalid base URL {url[:80]!r}: a path like /user/alice/ of letters, digits "
            "and '._~-/', starting and ending with '/'")
    return url


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


def _split_forward(text: str) -> list[str]:
    """Split ``a:b:c`` where any part may be a bracketed IPv6 address."""
    parts, rest = [], text
    while rest:
        if rest.startswith("["):
            end = rest.find("]")
            if end < 0:
                raise SpecError(f"invalid forward {text!r}: missing ']'")
            parts.append(rest[1:end])
            rest = rest[end + 1 :]
            if rest and not rest.startswith(":"):
                raise SpecError(f"invalid forward {text!r}: expected ':' after ']'")
            rest = rest[1:]
        else:
            part, sep, rest = rest.partition(":")
            parts.append(part)
            if sep and not rest:
                parts.append("")
    return parts


def parse_forward(text: str, *, remote: bool = False) -> Forward:
    """Parse ``--forward [127.0.0.1:]PORT:HOST:HOSTPORT`` or ``--reverse [BIND:]PORT:HOST:PORT``.

    A local forward always listens on 127.0.0.1 (nothing else on this machine may reach it);
    a reverse forward listens on the target's 127.0.0.1 unless a bind address is given.
    """
    option = "--reverse" if remote else "--forward"
    example = "1313:localhost:8000" if remote else "6006:localhost:6006"
    raw = str(text).strip()
    if raw.startswith("-") or any(c.isspace() for c in raw):
        raise SpecError(f"invalid {option} {text!r}: expected PORT:HOST:HOSTPORT, e.g. {example}")
    parts = _split_forward(raw)
    if len(parts) not in (3, 4):
        raise SpecError(f"invalid {option} {text!r}: expected PORT:HOST:HOSTPORT, e.g. {example}")
    bind = "127.0.0.1"
    if len(parts) == 4:
        bind = parts.pop(0)
        if not remote and bind not in ("127.0.0.1", "localhost"):
            raise SpecError(f"invalid {option} {text!r}: local forwards listen on 127.0.0.1 "
                            "only, so that nobody else on the network can use them")
        bind = "127.0.0.1" if bind == "localhost" else check_host(bind)
    where = "remote port" if remote else "local port"
    listen = parse_port(parts[0], f"{where} of {option} {text}", allow_zero=True)
    host = check_host(parts[1])
    port = parse_port(parts[2], f"destination port of {option} {text}")
    return Forward(listen_port=listen, host=host, port=port, remote=remote, bind=bind)


def parse_forwards(values: Iterable[str] | str | None, *, remote: bool = False
                   ) -> tuple[Forward, ...]:
    """Parse repeated ``--forward`` or ``--reverse`` values."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    return tuple(parse_forward(v, remote=remote) for v in values)


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
    forwards: Iterable[str] | str | None = None,
    reverse: Iterable[str] | str | None = None,
    jupyter: bool = True,
) -> TunnelSpec:
    """Build a validated :class:`TunnelSpec` from front-end input.

    ``target`` may itself be a phrase (``beast via unicorn``); its jump hosts
    come first, then those of ``via``.
    """
    hop, phrase_via = parse_phrase(target)
    local = parse_forwards(forwards)
    remote = parse_forwards(reverse, remote=True)
    if not jupyter:
        if not local and not remote:
            raise SpecError("nothing to forward: with --no-jupyter give at least one --forward "
                            "or --reverse")
        given = [o for o, v in (("--local-port", local_port), ("--remote-port", remote_port))
                 if v not in (None, "")] + (["--launch"] if launch else [])
        if given:
            raise SpecError(f"--no-jupyter leaves out the Jupyter forward, so {', '.join(given)} "
                            "cannot be used with it; use --forward PORT:HOST:HOSTPORT instead")
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
        forwards=local,
        reverse=remote,
        jupyter=bool(jupyter),
    )
    ports = [f.listen_port for f in local if f.listen_port]
    if spec.jupyter and spec.local_port:
        ports.append(spec.local_port)
    twice = sorted({p for p in ports if ports.count(p) > 1})
    if twice:
        raise SpecError(f"local port {twice[0]} is asked for twice; each forward needs its own")
    remote_ports = [f.listen_port for f in remote if f.listen_port]
    twice = sorted({p for p in remote_ports if remote_ports.count(p) > 1})
    if twice:
        raise SpecError(f"remote port {twice[0]} is asked for twice in --reverse")
    return spec
