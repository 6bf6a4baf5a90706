"""What ssh says on its stderr (run with ``-v``), turned into the engine's typed errors.

ssh and its ProxyJump helpers share one stderr.  The hops log in one after the other, so
the number of ``Authenticated to …`` lines tells which hop a failure concerns (the first
not yet logged in); a line that names a host or address names its hop directly.  The
messages say the same as the in-process backend's, where ssh tells enough to.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, field

from ..errors import (
    AnswerNeeded,
    AuthError,
    ForwardingRefused,
    HopTimeout,
    HopUnreachable,
    HostKeyError,
    TunnelError,
)
from ..login.questions import HOW_TO_ANSWER
from ..sshconfig import ResolvedHop

_KEY_TYPES = r"(?:RSA|DSA|ECDSA|ED25519|ECDSA-SK|ED25519-SK|XMSS)(?:-CERT)?"
_OFFER = re.compile(rf"(?:Offering public key|Trying private key): (.+?)(?: {_KEY_TYPES} "
                    r"SHA256:\S+.*)?$")
_HOST_KEY = re.compile(r"Server host key: (\S+) (SHA256:\S+)")
_ADDED = re.compile(r"Warning: Permanently added '([^']+)' \((\S+)\) to the list of known hosts")
_CONNECT = re.compile(r"^ssh: connect to host (\S+) port (\d+): (.+)$")
_RESOLVE = re.compile(r"Could not resolve hostname (\S+?): (.+)$")
_OPEN_FAILED = re.compile(r"^channel \d+: open failed: ([^:]+)(?:: (.*))?$")
_UNKNOWN_KEY = re.compile(r"^No (\S+) host key is known for (\S+) and you have requested strict")
_LOST = re.compile(r"^(?:Connection to (\S+) closed by remote host|"
                   r"Connection (?:closed|reset) by (\S+) port (\d+))")
_TIMEOUT = re.compile(r"^Timeout, server (\S+) not responding")
_PARTIAL = re.compile(r'^Authenticated using "([^"]+)" with partial success')
_DENIED = re.compile(r"Permission denied \(([^)]*)\)")
#: what a person answers for each method ssh may ask for, in messages
_WANTS = {"keyboard-interactive": "a one-time code or another answer (keyboard-interactive)",
          "password": "a password"}


def key_is_locked(path: str) -> bool:
    """Whether the private key file at ``path`` is encrypted (needs a passphrase)."""
    try:
        with open(path, "rb") as fh:
            text = fh.read(65536).decode(errors="replace")
    except OSError:
        return False
    if "BEGIN ENCRYPTED PRIVATE KEY" in text or "Proc-Type: 4,ENCRYPTED" in text:
        return True
    match = re.search(r"-----BEGIN OPENSSH PRIVATE KEY-----(.*?)-----END", text, re.DOTALL)
    if not match:
        return False
    try:
        data = base64.b64decode("".join(match.group(1).split()))
    except (binascii.Error, ValueError):
        return False
    magic = b"openssh-key-v1\0"
    if not data.startswith(magic) or len(data) < len(magic) + 4:
        return False
    size = int.from_bytes(data[len(magic):len(magic) + 4], "big")
    return data[len(magic) + 4:len(magic) + 4 + size] != b"none"


def find_hop(chain: list[ResolvedHop], host: str, port: int | None = None) -> ResolvedHop | None:
    """The hop ``host`` (a name, an address or ``[host]:port``) names, if one does."""
    match = re.fullmatch(r"\[(.+)\]:(\d+)", host)
    if match:
        host, port = match.group(1), int(match.group(2))
    for hop in chain:
        if host in (hop.hostname, hop.alias, hop.known_hosts_name) and \
                port in (None, hop.port):
            return hop
    return None


@dataclass
class LoginTrace:
    """Facts gathered line by line from the stderr of an ssh that logs in to a chain."""

    chain: list[ResolvedHop]
    authenticated: int = 0
    host_key: tuple[str, str] | None = None
    offered: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)
    forked: bool = False
    #: the method the current hop accepted with partial success (it wants another)
    partial: str | None = None

    def feed(self, line: str) -> int | None:
        """Take one line; return the index of a hop that starts to be connected now."""
        if len(self.lines) < 5000:
            self.lines.append(line)
        text = line.removeprefix("debug1: ")
        if text.startswith(("Authenticated to ", "Authentication succeeded")):
            self.authenticated += 1
            self.offered, self.host_key, self.partial = [], None, None
            return self.authenticated if self.authenticated < len(self.chain) else None
        if text.startswith("forking to background"):
            self.forked = True
        elif match := _HOST_KEY.search(text):
            self.host_key = (match.group(1), match.group(2))
        elif match := _PARTIAL.match(text):
            self.partial = match.group(1)
        elif match := _OFFER.search(text):
            self.offered.append(match.group(1))
        elif match := _ADDED.search(text):
            hop = find_hop(self.chain, match.group(1)) or self.failing()
            keytype, fp = self.host_key or (match.group(2), "")
            files = hop.known_hosts_files[0] if hop.known_hosts_files else "known_hosts"
            self.notices.append(f"Permanently added the {keytype} host key of {hop.label} "
                                f"({fp}) to {files}")
        return None

    def failing(self) -> ResolvedHop:
        """The first hop not logged in yet."""
        return self.chain[min(self.authenticated, len(self.chain) - 1)]

    def error(self, status: int, timeout: float) -> TunnelError:
        """Why the login failed, naming the hop."""
        said = [ln for ln in self.lines if not ln.startswith("debug")]
        for line in said:
            found = self._classify(line, said, timeout)
            if found is not None:
                return found
        hop = self.failing()
        last = next((ln for ln in reversed(said) if ln.strip() and not
                     ln.startswith(("Killed by signal", "OpenSSH_"))), f"exit status {status}")
        return HopUnreachable(f"ssh could not connect to {hop.label}: {last}", hop=hop.alias)

    def _classify(self, line: str, said: list[str], timeout: float) -> TunnelError | None:
        hop = self.failing()
        t = hop.connect_timeout or timeout
        if match := _RESOLVE.search(line):
            hop = find_hop(self.chain, match.group(1)) or hop
            return HopUnreachable(f"cannot resolve {hop.label}: no such host name. Check the "
                                  "name or the HostName in your ssh config", hop=hop.alias)
        if match := _CONNECT.match(line):
            hop = find_hop(self.chain, match.group(1), int(match.group(2))) or hop
            why = match.group(3)
            t = hop.connect_timeout or timeout
            if "timed out" in why:
                return HopTimeout(f"{hop.label} did not answer within {t:g} s: is it up and "
                                  "reachable from here? (ConnectTimeout sets the limit)",
                                  hop=hop.alias)
            if "refused" in why:
                return HopUnreachable(f"{hop.label} refused the connection: no SSH server "
                                      f"listens on port {hop.port}", hop=hop.alias)
            return HopUnreachable(f"cannot reach {hop.label}: {why}", hop=hop.alias)
        if "timed out during banner exchange" in line:
            return HopTimeout(f"{hop.label} did not complete the SSH handshake within {t:g} s",
                              hop=hop.alias)
        if match := _OPEN_FAILED.match(line):
            return self._jump_failed(hop, match.group(1), match.group(2) or "")
        if "REMOTE HOST IDENTIFICATION HAS CHANGED" in line:
            return self._host_key_changed(hop)
        if match := _UNKNOWN_KEY.match(line):
            hop = find_hop(self.chain, match.group(2)) or hop
            return self._host_key_unknown(hop)
        if line.startswith("Host key verification failed"):
            keytype, fp = self.host_key or ("key", "")
            detail = next((ln for ln in said if "revoked" in ln.lower()), "refused by ssh")
            return HostKeyError(f"host key for {hop.label} ({keytype} {fp}) was not "
                                f"accepted: {detail}", hop=hop.alias)
        if (match := _DENIED.search(line)) and (needed := self._answer_needed(hop, match)):
            return needed
        if "Permission denied (" in line or "Too many authentication failures" in line:
            tried = ", ".join(dict.fromkeys(self.offered)) or "no key was found"
            locked = [key for key in dict.fromkeys(self.offered) if key_is_locked(key)]
            if locked:
                return AnswerNeeded(
                    f"{hop.label} refused to log in {hop.user}: the key {locked[0]} needs its "
                    f"passphrase, and no agent holds the key: {HOW_TO_ANSWER}, or add the key "
                    "to ssh-agent (ssh-add)", hop=hop.alias)
            return AuthError(
                f"{hop.label} refused to log in {hop.user}: tried {tried}. Check User and "
                "IdentityFile for this host in your ssh config, or add the key to ssh-agent",
                hop=hop.alias)
        if line.startswith(("kex_exchange_identification:", "Connection closed by",
                            "Connection reset by", "ssh_exchange_identification:")):
            return HopUnreachable(f"SSH handshake with {hop.label} failed: {line}. Is an SSH "
                                  f"server listening on port {hop.port}?", hop=hop.alias)
        return None

    def _answer_needed(self, hop: ResolvedHop, match: re.Match[str]) -> AnswerNeeded | None:
        """A denial after which the hop would have asked a question (a one-time code, a
        password) that ssh was not let ask."""
        methods = [m.strip() for m in match.group(1).split(",")]
        wants = [_WANTS[m] for m in methods if m in _WANTS]
        if not wants:
            return None
        what = " or ".join(wants)
        how = HOW_TO_ANSWER
        if self.partial is not None:
            return AnswerNeeded(f"{hop.label} accepted the {self._method(self.partial)} of "
                                f"{hop.user} but also wants {what}: {how}", hop=hop.alias)
        if "publickey" in methods:
            tried = ", ".join(dict.fromkeys(self.offered)) or "no key was found"
            return AnswerNeeded(f"{hop.label} refused to log in {hop.user} with a key (tried "
                                f"{tried}) and asks for {what} instead: {how}, or add a key "
                                "it accepts", hop=hop.alias)
        return AnswerNeeded(f"{hop.label} asks {hop.user} for {what}: {how}", hop=hop.alias)

    @staticmethod
    def _method(name: str) -> str:
        return {"publickey": "key", "password": "password"}.get(name, f"{name} login")

    def _jump_failed(self, hop: ResolvedHop, what: str, why: str) -> TunnelError:
        index = self.chain.index(hop)
        prev = self.chain[index - 1] if index else hop
        if what.strip() == "administratively prohibited":
            return ForwardingRefused(
                f"{prev.label} does not allow TCP forwarding, so it cannot be a jump host for "
                f"{hop.alias} (AllowTcpForwarding in its sshd_config)", hop=prev.alias)
        return HopUnreachable(
            f"{prev.alias} could not connect to {hop.label}: {why or what}. Is {hop.alias} up, "
            f"and is its name right as {prev.alias} sees it?", hop=hop.alias)

    def _files(self, hop: ResolvedHop) -> str:
        return hop.known_hosts_files[0] if hop.known_hosts_files else "~/.ssh/known_hosts"

    def _host_key_changed(self, hop: ResolvedHop) -> HostKeyError:
        keytype, fp = self.host_key or ("key", "(fingerprint not shown)")
        files = self._files(hop)
        return HostKeyError(
            f"host key for {hop.label} has CHANGED: the server now presents {keytype} {fp}, "
            f"which does not match {files}. Someone could be intercepting the connection, or "
            "the host was reinstalled. If you know the change is expected, remove the old "
            f"line with: ssh-keygen -R '{hop.known_hosts_name}' -f {files}", hop=hop.alias)

    def _host_key_unknown(self, hop: ResolvedHop) -> HostKeyError:
        keytype, fp = self.host_key or ("key", "(fingerprint not shown)")
        ssh = f"ssh -F {hop.config_file} {hop.alias}" if hop.config_file else f"ssh {hop.alias}"
        return HostKeyError(
            f"host key for {hop.label} is not known: {keytype} {fp}. Check this fingerprint "
            f"with the host's administrator, then connect once with '{ssh}' to add it to "
            f"{self._files(hop)}, or set 'StrictHostKeyChecking accept-new' for this host in "
            "your ssh config", hop=hop.alias)


def loss(lines: list[str], chain: list[ResolvedHop], keepalive: dict[str, tuple[int, int]]
         ) -> tuple[ResolvedHop, str, bool] | None:
    """Which hop a running ssh lost and how, from what it said at its end: (hop, message,
    timed out); None if it did not say.  ``keepalive`` maps a hop's alias to the
    (interval, count) its keepalives used."""
    named: tuple[ResolvedHop, str, bool] | None = None
    for line in lines:
        if match := _TIMEOUT.match(line):
            hop = find_hop(chain, match.group(1))
            if hop is not None:
                every, count = keepalive.get(hop.alias, (0, 0))
                return hop, (f"{hop.label} stopped answering: {count} keepalive(s) sent "
                             f"{every} s apart got no reply"), True
        elif match := _LOST.match(line):
            port = int(match.group(3)) if match.group(3) else None
            hop = find_hop(chain, match.group(1) or match.group(2), port)
            # a lost jump host takes the hops behind it along: name the first hop lost,
            # whichever ssh process said so first
            if hop is not None and (named is None or chain.index(hop) < chain.index(named[0])):
                named = hop, f"the connection to {hop.label} was closed", False
    return named
