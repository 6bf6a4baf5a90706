"""Serve a tunnel's remote JupyterLab through this Jupyter server, HTTP and websockets.

``{base_url}jupyter-tunnel/lab/NAME/…`` goes through tunnel NAME to the same path on the
remote server, whose base URL is that very prefix (a server jupyter_tunnel launched with it:
:mod:`.serve_rules`).  The browser authenticates to this server as for any other page; the
proxy adds the remote token upstream and never passes it, nor the remote server's cookies,
back.  The local server's own XSRF check applies (the remote Lab's script sends the only
``_xsrf`` cookie it sees: this server's).
"""

from __future__ import annotations

import asyncio
import contextlib
from http.client import responses
from typing import Any

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.httputil import HTTPHeaders
from tornado.iostream import StreamClosedError
from tornado.websocket import (
    WebSocketClientConnection,
    WebSocketClosedError,
    WebSocketError,
    WebSocketHandler,
    websocket_connect,
)

from .detect import RemoteServer
from .errors import TunnelError
from .handlers import TunnelHandlerMixin
from .rest_errors import ApiError
from .serve_rules import (
    SERVE_PATH,
    downstream_headers,
    served,
    upstream_headers,
    upstream_query,
    without_token,
)
from .state import State

#: seconds for the remote server's whole answer (a large download takes a while)
REQUEST_TIMEOUT = 600.0
CONNECT_TIMEOUT = 20.0


class ServeHandler(TunnelHandlerMixin, WebSocketMixin, WebSocketHandler, JupyterHandler):
    """``jupyter-tunnel/lab/NAME/PATH``: tunnel NAME's remote JupyterLab, served here."""

    def initialize(self) -> None:
        self._upstream: WebSocketClientConnection | None = None
        self._subprotocol: str | None = None
        self._pump: asyncio.Task[None] | None = None

    async def prepare(self, *args: Any, **kwargs: Any) -> None:
        """A page is checked as any page of this server (a signed-out browser is sent to the
        login, under a hub to the hub's); a websocket is refused, not redirected."""
        if self.request.headers.get("Upgrade", "").lower() == "websocket":
            await super().prepare(*args, **kwargs)
        else:
            await JupyterHandler.prepare(self)

    # which server ---------------------------------------------------------
    def _target(self, name: str) -> tuple[RemoteServer, int]:
        """The remote server and local port of tunnel ``name``, if it can be served."""
        try:
            tunnel = self.service.served_tunnel(name)
        except TunnelError:
            raise ApiError(404, f"no tunnel named {name[:64]!r} is open in this Jupyter server",
                           kind="not-found") from None
        remote, port, state = tunnel.remote, tunnel.local_port, tunnel.state
        if state is not State.READY:
            why = f": {tunnel.problem}" if tunnel.problem else ""
            raise ApiError(409, f"tunnel {name} is {state.value}, not ready{why}",
                           kind="not-ready")
        if remote is None or port is None:
            raise ApiError(409, f"tunnel {name} forwards no Jupyter server", kind="not-served")
        url, why = served({"name": tunnel.name, "target": tunnel.chain[-1].alias,
                           "jupyter": tunnel.spec.jupyter, "state": state.value,
                           "remote_base_url": remote.base_url},
                          self.service.serve_under, own=True)
        if url is None:
            raise ApiError(409, why, kind="not-served")
        return remote, port

    def _upstream_url(self, remote: RemoteServer, port: int, websocket: bool) -> str:
        scheme = ("wss" if remote.secure else "ws") if websocket else \
            ("https" if remote.secure else "http")
        kept = upstream_query(self.request.query)
        query = f"?{kept}" if kept else ""
        return f"{scheme}://127.0.0.1:{port}{self.request.path}{query}"

    def _upstream_headers(self, token: str) -> HTTPHeaders:
        headers = HTTPHeaders()
        for key, value in upstream_headers(self.request.headers.get_all(), token):
            headers.add(key, value)
        return headers

    # HTTP -------------------------------------------------------------------
    @web.authenticated
    @authorized("execute")  # type: ignore[untyped-decorator]  # reaches a remote server
    async def get(self, name: str, path: str) -> None:  # type: ignore[override]
        if self.request.headers.get("Upgrade", "").lower() == "websocket":
            await self._websocket(name, path)
        else:
            await self._proxy(name)

    @web.authenticated
    @authorized("execute")  # type: ignore[untyped-decorator]
    async def post(self, name: str, path: str) -> None:
        await self._proxy(name)

    @web.authenticated
    @authorized("execute")  # type: ignore[untyped-decorator]
    async def put(self, name: str, path: str) -> None:
        await self._proxy(name)

    @web.authenticated
    @authorized("execute")  # type: ignore[untyped-decorator]
    async def patch(self, name: str, path: str) -> None:
        await self._proxy(name)

    @web.authenticated
    @authorized("execute")  # type: ignore[untyped-decorator]
    async def delete(self, name: str, path: str) -> None:
        await self._proxy(name)

    @web.authenticated
    @authorized("execute")  # type: ignore[untyped-decorator]
    async def head(self, name: str, path: str) -> None:
        await self._proxy(name)

    async def _proxy(self, name: str) -> None:
        """Pass the request on to the remote server and its answer back."""
        remote, port = self._target(name)
        method = self.request.method or "GET"
        body = self.request.body if self.request.body or method in ("POST", "PUT", "PATCH") \
            else None
        request = HTTPRequest(
            self._upstream_url(remote, port, websocket=False), method=method,
            headers=self._upstream_headers(remote.token), body=body, follow_redirects=False,
            allow_nonstandard_methods=True, decompress_response=True,
            connect_timeout=CONNECT_TIMEOUT, request_timeout=REQUEST_TIMEOUT,
            validate_cert=False)  # a remote certificate names the remote host, not 127.0.0.1
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except (OSError, HTTPClientError) as exc:
            raise self._unreachable(name, exc) from None
        if response.code == 599:
            raise self._unreachable(name, response.error)
        self.set_status(response.code, response.reason or responses.get(response.code, "?"))
        passed = downstream_headers(response.headers.get_all())
        for key in {k for k, _ in passed}:
            self.clear_header(key)
        for key, value in passed:
            self.add_header(key, value)
        if response.body and method != "HEAD" and response.code not in (204, 304):
            self.write(without_token(response.body, response.headers.get("Content-Type", ""),
                                     remote.token))
        with contextlib.suppress(StreamClosedError):  # the browser went meanwhile
            await self.finish()

    def _unreachable(self, name: str, exc: object) -> ApiError:
        what = type(exc).__name__ if exc is not None else "no answer"
        return ApiError(502, f"the remote Jupyter of tunnel {name} did not answer through the "
                        f"tunnel ({what})", kind="unreachable")

    # websockets ---------------------------------------------------------------
    async def _websocket(self, name: str, path: str) -> None:
        """Connect upstream first (its chosen subprotocol is the one to answer with), then
        accept the browser's websocket and relay both ways."""
        origin = self.request.headers.get("Origin")
        if origin is not None and not self.check_origin(origin):
            raise ApiError(403, "cross-origin websocket refused", kind="forbidden")
        remote, port = self._target(name)
        offered = [p.strip() for p in
                   self.request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        request = HTTPRequest(
            self._upstream_url(remote, port, websocket=True),
            headers=self._upstream_headers(remote.token), connect_timeout=CONNECT_TIMEOUT,
            request_timeout=CONNECT_TIMEOUT, validate_cert=False)
        try:
            upstream = await websocket_connect(request, subprotocols=offered or None,
                                               max_message_size=self.max_message_size)
        except HTTPClientError as exc:
            if exc.code == 599:
                raise self._unreachable(name, exc) from None
            raise ApiError(exc.code if 400 <= exc.code < 500 else 502,
                           f"the remote Jupyter of tunnel {name} refused the websocket "
                           f"(HTTP {exc.code})", kind="upstream") from None
        except (OSError, WebSocketError, asyncio.TimeoutError) as exc:
            raise self._unreachable(name, exc) from None
        self._upstream = upstream
        self._subprotocol = upstream.selected_subprotocol
        try:
            await WebSocketHandler.get(self, name, path)
        finally:
            if self.ws_connection is None:  # the handshake with the browser failed
                upstream.close()

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        """The subprotocol the remote server chose (the browser offered it too)."""
        return self._subprotocol if self._subprotocol in subprotocols else None

    def open(self, *args: Any, **kwargs: Any) -> None:
        """Start relaying what the remote server sends."""
        super().open()
        self._pump = asyncio.ensure_future(self._relay_down())

    async def _relay_down(self) -> None:
        upstream = self._upstream
        assert upstream is not None
        try:
            while True:
                message = await upstream.read_message()
                if message is None or self.ws_connection is None:
                    break
                await self.write_message(message, binary=isinstance(message, bytes))
        except WebSocketClosedError:
            pass
        finally:
            upstream.close()
            self.close(upstream.close_code, upstream.close_reason)

    async def on_message(self, message: str | bytes) -> None:
        """Pass a message from the browser on to the remote server."""
        upstream = self._upstream
        if upstream is None:
            return
        try:
            await upstream.write_message(message, binary=isinstance(message, bytes))
        except WebSocketClosedError:
            self.close()

    def on_close(self) -> None:
        """The browser went: close the remote side too."""
        if self._upstream is not None:
            self._upstream.close(self.close_code, self.close_reason)
        if self._pump is not None and not self._pump.done():
            with contextlib.suppress(Exception):
                self._pump.cancel()


serve_handlers: list[tuple[str, type[ServeHandler]]] = [
    (rf"/{SERVE_PATH}/(?P<name>[^/]+)/(?P<path>.*)", ServeHandler),
]
