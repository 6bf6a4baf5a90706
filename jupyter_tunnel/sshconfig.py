"""Resolve hops through the OpenSSH client configuration.

A small reader of ``ssh_config(5)`` with OpenSSH's rules: the first value
obtained wins (IdentityFile accumulates), ``Host`` and ``Match`` blocks with
patterns and negation, ``Include``, and the ``%`` tokens of file names.
``Match exec`` is never run: it is treated as not matching.
"""

from __future__ import annotations

import getpass
import glob
import hashlib
import os
import re
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, SpecError
from .spec import Hop, check_host, check_user, parse_port, parse_via

SYSTEM_CONFIG = "/etc/ssh/ssh_config"
DEFAULT_IDENTITIES = ("id_rsa", "id_ecdsa", "id_ecdsa_sk", "id_ed25519", "id_ed25519_sk")
_MULTI = {"identityfile", "certificatefile", "localforward", "remoteforward"}
_MAX_CHAIN = 10
_MAX_INCLUDE_DEPTH = 16


@dataclass(frozen=True)
class ResolvedHop:
    """A hop with every setting needed to connect to it."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...] = ()
    identities_only: bool = False
    known_hosts_files: tuple[str, ...] = ()
    global_known_hosts_files: tuple[str, ...] = ()
    host_key_alias: str | None = None
    #: "yes", "accept-new" or "no" ("ask" is read as "yes": nobody can be asked)
    strict_host_key_checking: str = "yes"
    server_alive_interval: int | None = None
    server_alive_count_max: int | None = None
    connect_timeout: float | None = None
    #: the config file given explicitly (``--ssh-config``), for hints such as ``ssh -F``
    config_file: str | None = None

    @property
    def label(self) -> str:
        """How messages name this hop: ``beast (10.0.0.7:22)``."""
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        alias = f"[{self.alias}]" if ":" in self.alias else self.alias
        return f"{alias} ({host}:{self.port})"

    @property
    def known_hosts_name(self) -> str:
        """The name this hop has in known_hosts: ``host``, ``[host]:port`` or HostKeyAlias."""
        if self.host_key_alias:
            return self.host_key_alias
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"


_KEYWORD_RE = re.compile(r"^([A-Za-z][A-Za-z0-9]*)(?:\s*=\s*|\s+|$)(.*)$")


def _tokens(line: str) -> list[str]:
    """Split a config line into keyword and arguments, as OpenSSH does.

    The keyword ends at white space or ``=``; arguments may be quoted; ``#`` starts a
    comment only at the start of a word.
    """
    line = line.strip()
    if not line or line.startswith("#"):
        return []
    match = _KEYWORD_RE.match(line)
    if not match:
        raise ConfigError(f"cannot parse ssh config line {line!r}")
    lexer = shlex.shlex(match.group(2), posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        args = list(lexer)
    except ValueError as exc:
        raise ConfigError(f"cannot parse ssh config line {line!r}: {exc}") from None
    for i, arg in enumerate(args):
        if arg.startswith("#"):
            args = args[:i]
            break
    return [match.group(1), *args]


def wildcard_match(pattern: str, value: str) -> bool:
    """OpenSSH wildcard matching: ``*`` and ``?`` only, case-insensitive."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE | re.DOTALL) is not None


def match_patterns(patterns: list[str], value: str) -> bool:
    """OpenSSH pattern-list matching: any positive match and no negated one."""
    matched = False
    for item in patterns:
        for pattern in item.split(","):
            negate = pattern.startswith("!")
            pat = pattern[1:] if negate else pattern
            if wildcard_match(pat, value):
                if negate:
                    return False
                matched = True
    return matched


class SSHConfig:
    """An OpenSSH client config file (plus, by default, the system one)."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, system: bool | None = None):
        home = Path.home()
        self.explicit = path is not None
        self.path = Path(os.path.expanduser(str(path))) if path else home / ".ssh" / "config"
        if self.explicit and not self.path.is_file():
            raise ConfigError(f"ssh config file {self.path} does not exist")
        read_system = (not self.explicit) if system is None else system
        self.files = [self.path] + ([Path(SYSTEM_CONFIG)] if read_system else [])

    def lookup(self, alias: str, user: str | None = None) -> dict[str, list[str]]:
        """Every option that applies to ``alias``, first value first, lowercase keys."""
        options: dict[str, list[str]] = {}
        for file in self.files:
            if file.is_file():
                self._read(file, alias, user, options, depth=0)
        return options

    def hosts(self) -> list[str]:
        """Host aliases named in the config without wildcards (for suggestions), in the
        user's config and the files it includes."""
        names: list[str] = []
        for file in self.files[:1]:
            self._hosts_in(file, names, 0)
        return names

    def _hosts_in(self, file: Path, names: list[str], depth: int) -> None:
        if depth > _MAX_INCLUDE_DEPTH or not file.is_file():
            return
        for raw in file.read_text(errors="replace").splitlines():
            toks = _tokens(raw)
            if len(toks) > 1 and toks[0].lower() == "host":
                names.extend(p for p in toks[1:]
                             if not any(c in p for c in "*?!") and p not in names)
            elif len(toks) > 1 and toks[0].lower() == "include":
                for inc in self._includes(file, toks[1:]):
                    self._hosts_in(inc, names, depth + 1)

    def _includes(self, file: Path, patterns: list[str]) -> list[Path]:
        """The files an ``Include`` line in ``file`` names, as ssh finds them."""
        found: list[Path] = []
        for pattern in patterns:
            expanded = os.path.expanduser(pattern)
            if not os.path.isabs(expanded):
                base = self.path.parent if file != Path(SYSTEM_CONFIG) else file.parent
                expanded = str(base / expanded)
            found += [Path(inc) for inc in sorted(glob.glob(expanded))]
        return found

    def _read(
        self, file: Path, alias: str, user: str | None, options: dict[str, list[str]], depth: int
    ) -> None:
        if depth > _MAX_INCLUDE_DEPTH:
            raise ConfigError(f"ssh config: Include nested too deeply at {file}")
        try:
            lines = file.read_text(errors="replace").splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read ssh config {file}: {exc.strerror}") from None
        active = True
        for number, raw in enumerate(lines, 1):
            toks = _tokens(raw)
            if not toks:
                continue
            key, args = toks[0].lower(), toks[1:]
            if key == "host":
                active = match_patterns(args, alias)
            elif key == "match":
                active = self._match(args, alias, user, options, f"{file}:{number}")
            elif not active:
                continue
            elif key == "include":
                for inc in self._includes(file, args):
                    self._read(inc, alias, user, options, depth + 1)
            elif not args:
                raise ConfigError(f"ssh config {file}:{number}: {toks[0]} needs a value")
            elif key in _MULTI:
                options.setdefault(key, []).extend(args)
            elif key not in options:
                options[key] = args

    @staticmethod
    def _match(
        args: list[str], alias: str, user: str | None, options: dict[str, list[str]], where: str
    ) -> bool:
        hostname = options.get("hostname", [alias])[0]
        i = 0
        while i < len(args):
            crit = args[i].lower()
            negate = crit.startswith("!")
            crit = crit.lstrip("!")
            if crit in ("all", "canonical", "final"):
                ok = crit == "all"
                i += 1
            else:
                if i + 1 >= len(args):
                    raise ConfigError(f"ssh config {where}: Match {crit} needs an argument")
                value = args[i + 1]
                i += 2
                if crit == "host":
                    ok = match_patterns([value], hostname)
                elif crit == "originalhost":
                    ok = match_patterns([value], alias)
                elif crit == "user":
                    ok = match_patterns([value], user or options.get("user", [_local_user()])[0])
                elif crit == "localuser":
                    ok = match_patterns([value], _local_user())
                else:  # exec, localnetwork, tagged …: never run, never match
                    ok = False
            if ok == negate:
                return False
        return True


def _local_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return str(os.getuid())


def _expand(value: str, alias: str, hostname: str, port: int, user: str,
            host_key_alias: str | None = None) -> str:
    """Expand OpenSSH's ``%`` tokens and a leading ``~``."""
    home = str(Path.home())
    local = socket.gethostname()
    table = {
        "%": "%", "d": home, "u": _local_user(), "h": hostname, "n": alias,
        "p": str(port), "r": user, "i": str(os.getuid()), "l": local,
        "L": local.split(".")[0], "k": host_key_alias or alias,
        "C": hashlib.sha1(f"{local}{hostname}{port}{user}".encode()).hexdigest(),  # noqa: S324
    }
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "%" and i + 1 < len(value):
            token = value[i + 1]
            if token not in table:
                raise ConfigError(f"ssh config: unsupported token %{token} in {value!r}")
            out.append(table[token])
            i += 2
        else:
            out.append(ch)
            i += 1
    text = "".join(out)
    if text.startswith("~"):
        text = os.path.expanduser(text)
    return text


def _yes_no(value: str, what: str) -> bool:
    low = value.lower()
    if low in ("yes", "true", "on"):
        return True
    if low in ("no", "false", "off"):
        return False
    raise ConfigError(f"ssh config: {what} must be yes or no, not {value!r}")


def resolve_hop(hop: Hop, config: SSHConfig) -> tuple[ResolvedHop, tuple[Hop, ...]]:
    """Resolve one hop; also return the jump hosts its config's ProxyJump names."""
    opts = config.lookup(hop.host, hop.user)
    first = {k: v[0] for k, v in opts.items()}
    hostname = _expand(first.get("hostname", hop.host), hop.host, hop.host, 22, "")
    try:
        check_host(hostname)
        user = check_user(hop.user or first.get("user") or _local_user())
        port = hop.port or parse_port(first.get("port", "22"), f"Port for {hop.host}")
    except SpecError as exc:
        raise ConfigError(f"ssh config for {hop.host}: {exc}", hop=hop.host) from None

    def files(key: str, default: list[str]) -> tuple[str, ...]:
        vals = opts.get(key) or default
        out: list[str] = []
        for v in vals:
            if v.lower() == "none":
                continue
            out.append(_expand(v, hop.host, hostname, port, user, first.get("hostkeyalias")))
        return tuple(out)

    identities = files("identityfile", [f"~/.ssh/{n}" for n in DEFAULT_IDENTITIES])
    strict = first.get("stricthostkeychecking", "ask").lower()
    strict = {"ask": "yes", "true": "yes", "off": "no", "false": "no"}.get(strict, strict)
    if strict not in ("yes", "no", "accept-new"):
        raise ConfigError(
            f"ssh config for {hop.host}: StrictHostKeyChecking must be yes, accept-new, no or ask"
        )

    def number(key: str) -> int | None:
        if key not in first:
            return None
        text = first[key]
        if not text.isdigit():
            raise ConfigError(f"ssh config for {hop.host}: {key} must be a number, not {text!r}")
        return int(text)

    timeout = number("connecttimeout")
    resolved = ResolvedHop(
        alias=hop.host,
        hostname=hostname,
        port=port,
        user=user,
        identity_files=identities,
        identities_only=_yes_no(first.get("identitiesonly", "no"), "IdentitiesOnly"),
        known_hosts_files=files(
            "userknownhostsfile", ["~/.ssh/known_hosts", "~/.ssh/known_hosts2"]),
        global_known_hosts_files=files(
            "globalknownhostsfile", ["/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2"]
        ),
        host_key_alias=first.get("hostkeyalias"),
        strict_host_key_checking=strict,
        server_alive_interval=number("serveraliveinterval"),
        server_alive_count_max=number("serveralivecountmax"),
        connect_timeout=float(timeout) if timeout else None,
        config_file=str(config.path) if config.explicit else None,
    )
    jump = first.get("proxyjump")
    if "proxycommand" in first and first["proxycommand"].lower() != "none" and not jump:
        raise ConfigError(
            f"ssh config for {hop.host} uses ProxyCommand, which jupyter_tunnel does not run; "
            "use ProxyJump (or --via) instead",
            hop=hop.host,
        )
    via = () if not jump or jump.lower() == "none" else parse_via(",".join(opts["proxyjump"]))
    return resolved, via


def resolve_chain(
    target: Hop, via: tuple[Hop, ...] = (), config: SSHConfig | None = None
) -> list[ResolvedHop]:
    """Resolve a target and its jump hosts into the ordered chain of hops to connect.

    Explicit ``via`` hops replace the target's ProxyJump, as ``ssh -J`` does; the
    first jump host's own ProxyJump still applies.
    """
    config = config or SSHConfig()
    return _chain(target, via, config, depth=0, explicit=True)


def _chain(
    target: Hop, via: tuple[Hop, ...], config: SSHConfig, depth: int, explicit: bool
) -> list[ResolvedHop]:
    if depth > _MAX_CHAIN:
        raise ConfigError(f"ProxyJump chain longer than {_MAX_CHAIN} hops (a loop?) at {target}")
    resolved, config_via = resolve_hop(target, config)
    jumps = via if (explicit and via) else config_via
    if not jumps:
        return [resolved]
    chain = _chain(jumps[0], (), config, depth + 1, explicit=False)
    for jump in jumps[1:]:
        chain.append(resolve_hop(jump, config)[0])
    if len(chain) >= _MAX_CHAIN:
        raise ConfigError(f"chain to {target} is longer than {_MAX_CHAIN} hops")
    return [*chain, resolved]
