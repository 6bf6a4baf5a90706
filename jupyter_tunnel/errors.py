"""Typed errors of the tunnel engine.

Every error carries a message a person can act on, the hop it concerns (if any)
and whether trying again later can help.  Front ends map these to exit codes,
HTTP statuses or widget messages in one place each.
"""

from __future__ import annotations

import errno
from typing import Any


class TunnelError(Exception):
    """Base class of every error the engine raises on purpose."""

    #: whether the same operation may succeed if tried again later
    retryable: bool = False

    def __init__(self, message: str, *, hop: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hop = hop

    def __str__(self) -> str:
        return self.message

    @property
    def kind(self) -> str:
        """A stable machine-readable name, e.g. ``host-key``."""
        return _KINDS.get(type(self), "error")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form used by ``--json`` and the registry."""
        return {"error": self.message, "kind": self.kind, "hop": self.hop}


class SpecError(TunnelError, ValueError):
    """The request itself is malformed: bad host name, port, option."""


class ConfigError(TunnelError):
    """The ssh config or a key file cannot be used as it is."""


class HostKeyError(TunnelError):
    """A hop's host key is unknown or does not match known_hosts."""


class AuthError(TunnelError):
    """The server refused every key we offered."""


class AnswerNeeded(AuthError):
    """A hop asks a question (a one-time code, a password, a passphrase) and no one can be
    asked here (no terminal, no front end waiting): say which hop and how to answer."""


class AnswerTimeout(AuthError):
    """A question was not answered within the answer timeout."""


class AnswerRefused(AuthError):
    """The hop refused the answer given (a wrong code or password)."""


class NoQuestionWaiting(TunnelError):
    """An answer came for a question that no longer waits (answered, timed out, or never
    asked), or for a tunnel whose questions are asked elsewhere."""


class HopUnreachable(TunnelError):
    """A hop's address cannot be resolved or connected to."""

    retryable = True


class HopTimeout(HopUnreachable):
    """A hop did not answer in time."""


class ForwardingRefused(TunnelError):
    """A server refused to open a forwarding channel."""


class RemotePortRefused(ForwardingRefused):
    """The target refused to listen on a port for a reverse forward."""


class PortInUse(TunnelError):
    """The local port asked for is taken (or cannot be listened on)."""

    @classmethod
    def from_bind_error(cls, host: str, port: int, exc: OSError) -> PortInUse:
        """The error for a failed ``bind(host, port)``."""
        if exc.errno == errno.EADDRINUSE:
            from .ports import describe_holders

            return cls(f"local port {port} is already in use on {host}"
                       f"{describe_holders(port)}: choose another port, or leave --local-port "
                       "out to use a free one")
        return cls(f"cannot listen on {host}:{port}: {exc.strerror} (ports below 1024 need "
                   "privileges)")


class RemoteJupyterNotFound(TunnelError):
    """No usable Jupyter server runs on the last hop."""


class RemoteJupyterNotReady(TunnelError):
    """The remote Jupyter did not answer ``api/status`` through the tunnel."""

    retryable = True


class RemoteKernelError(TunnelError):
    """A remote kernel could not be listed, started, signalled or ended on the target."""


class KernelSpecNotFound(TunnelError):
    """No local kernelspec of that name was installed by jupyter_tunnel."""


class TunnelNotFound(TunnelError):
    """No tunnel of that name is known."""


class TunnelExists(TunnelError):
    """A live tunnel of that name already exists."""


class NotOwner(TunnelError):
    """The tunnel belongs to another process, which must close it."""


_KINDS: dict[type[TunnelError], str] = {
    SpecError: "bad-request",
    ConfigError: "config",
    HostKeyError: "host-key",
    AuthError: "auth",
    AnswerNeeded: "auth",
    AnswerTimeout: "auth",
    AnswerRefused: "auth",
    NoQuestionWaiting: "no-question",
    RemoteKernelError: "remote-kernel",
    KernelSpecNotFound: "not-found",
    HopUnreachable: "unreachable",
    HopTimeout: "timeout",
    ForwardingRefused: "forwarding-refused",
    RemotePortRefused: "remote-port-refused",
    PortInUse: "port-in-use",
    RemoteJupyterNotFound: "jupyter-not-found",
    RemoteJupyterNotReady: "jupyter-not-ready",
    TunnelNotFound: "not-found",
    TunnelExists: "exists",
    NotOwner: "not-owner",
}
