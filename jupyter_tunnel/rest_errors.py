"""HTTP statuses for the engine's errors: the one place the REST API maps them.

An :class:`ApiError` is a tornado ``HTTPError`` carrying the JSON body the handlers send.
"""

from __future__ import annotations

from typing import Any

from tornado import web

from . import errors

#: most specific class first (HopTimeout is a HopUnreachable, RemotePortRefused a
#: ForwardingRefused); the first ``isinstance`` match wins
_STATUS: list[tuple[type[errors.TunnelError], int]] = [
    (errors.SpecError, 400),  # the request itself is wrong
    (errors.ConfigError, 400),  # the ssh config cannot serve this request as it is
    (errors.TunnelNotFound, 404),
    (errors.KernelSpecNotFound, 404),
    (errors.RemoteKernelError, 502),
    (errors.TunnelExists, 409),
    (errors.NotOwner, 409),  # another process owns it: close it there
    (errors.PortInUse, 409),
    (errors.NoQuestionWaiting, 409),  # answered already, timed out, or asked elsewhere
    (errors.HopTimeout, 504),  # a hop (or the remote Jupyter) did not answer in time
    (errors.RemoteJupyterNotReady, 504),
    (errors.HostKeyError, 502),  # a hop answered, but not as it must
    (errors.AuthError, 502),
    (errors.HopUnreachable, 502),
    (errors.ForwardingRefused, 502),
    (errors.RemoteJupyterNotFound, 502),
]


def status_of(exc: errors.TunnelError) -> int:
    """The HTTP status for an engine error (500 for one this table does not know)."""
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


class ApiError(web.HTTPError):
    """An error answer of the REST API: a status and a JSON body a person can act on."""

    def __init__(self, status: int, message: str, *, kind: str = "error", hop: str | None = None,
                 tunnel: dict[str, Any] | None = None) -> None:
        # "%s" keeps tornado from %-formatting the message when it logs it
        super().__init__(status, "%s", message)
        self.status = status
        self.message = message
        self.kind = kind
        self.hop = hop
        self.tunnel = tunnel

    @classmethod
    def from_tunnel_error(cls, exc: errors.TunnelError,
                          tunnel: dict[str, Any] | None = None) -> ApiError:
        """The answer for an engine error."""
        return cls(status_of(exc), exc.message, kind=exc.kind, hop=exc.hop, tunnel=tunnel)

    def body(self) -> dict[str, Any]:
        """The JSON body (``message`` is what JupyterLab's ServerConnection shows)."""
        body: dict[str, Any] = {"message": self.message, "kind": self.kind, "hop": self.hop}
        if self.tunnel is not None:
            body["tunnel"] = self.tunnel
        return body


class TargetNotAllowed(ApiError):
    """A hop is outside the hosts this server may reach (``allowed_targets``)."""

    def __init__(self, message: str, hop: str) -> None:
        super().__init__(403, message, kind="not-allowed", hop=hop)
