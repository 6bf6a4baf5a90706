"""REST handlers under ``{base_url}jupyter-tunnel/api/``: thin, authenticated, authorized.

| method and path       | answer                                                        |
| --------------------- | ------------------------------------------------------------- |
| GET tunnels           | 200, every tunnel of the user (JSON list, as ``--json``)      |
| POST tunnels          | 201, the new tunnel (state connecting; ``"wait": true``: once |
|                       | ready, or the error of the failed open)                       |
| GET tunnels/NAME      | 200, one tunnel                                               |
| DELETE tunnels/NAME   | 200, the closed tunnel (a failed one is dismissed)            |
| POST tunnels/NAME/    | 202, the tunnel: ``{"id", "answer"}`` answers the question    |
| answer                | its ``prompt`` shows (409 if that question no longer waits)   |
| GET hosts             | 200, ``{"hosts": [...]}``: ssh-config hosts to suggest        |
| GET kernels           | 200, ``{"installed": [...], "running": [...]}``: the remote   |
|                       | kernels' kernelspecs of ours, the remote kernels running      |
| POST kernels          | 201, ``{"installed": [...]}``: kernelspecs for a target's     |
|                       | kernels (``{"target", "via"?, "kernels"?, "cwd"?}``)          |
| DELETE kernels/NAME   | 204, the kernelspec removed (404 if it is not one of ours)    |

Errors are JSON ``{"message", "kind", "hop"}`` with the status from :mod:`.rest_errors`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from http.client import responses
from typing import Any, TypeVar

from jupyter_core.utils import ensure_async
from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from jupyter_server.utils import url_path_join
from tornado import web

from .errors import TunnelError
from .rest_errors import ApiError
from .rest_kernels import parse_kernels_request
from .rest_service import TunnelService, parse_open_request

#: key of the TunnelService in the web app's settings
SERVICE_KEY = "jupyter_tunnel_service"
#: the resource name jupyter_server's Authorizer is asked about
AUTH_RESOURCE = "jupyter_tunnel"
API = "/jupyter-tunnel/api"

T = TypeVar("T")


class TunnelHandlerMixin(web.RequestHandler):
    """What every handler of ours shares (the REST API's and the served JupyterLab's): the
    resource the authorizer is asked about, the service, errors as JSON."""

    auth_resource = AUTH_RESOURCE

    @property
    def service(self) -> TunnelService:
        service: TunnelService = self.settings[SERVICE_KEY]
        return service

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        """Every error as JSON with a message a person can act on (no traceback, no token)."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            body = exc.body()
        elif isinstance(exc, web.HTTPError):
            message = exc.log_message % exc.args if exc.log_message else exc.reason
            body = {"message": message or responses.get(status_code, "error"), "kind": "http",
                    "hop": None}
        else:
            body = {"message": "unexpected server error; see the Jupyter server's log",
                    "kind": "error", "hop": None}
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))


class TunnelAPIHandler(TunnelHandlerMixin, ExtensionHandlerMixin, APIHandler):
    """The REST API's handlers: running blocking work off the loop, JSON answers."""

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking engine call in the service's threads; engine errors become answers."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.service.executor, fn, *args)
        except TunnelError as exc:
            raise ApiError.from_tunnel_error(exc) from None

    async def call_slow(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`call` for a call that logs in to hosts (the service's opening threads)."""
        try:
            result: T = await asyncio.wrap_future(self.service.run_slow(fn, *args))
        except TunnelError as exc:
            raise ApiError.from_tunnel_error(exc) from None
        return result

    def json_body(self) -> Any:
        """The request's JSON body (400 if it is not JSON)."""
        try:
            return json.loads(self.request.body or b"null")
        except ValueError as exc:
            raise ApiError(400, f"the request body is not JSON: {exc}", kind="bad-request") \
                from None

    async def shown(self, data: Any) -> Any:
        """``data`` as this user may see it: the tunnels' URLs carry the remote servers'
        login tokens, which only a user allowed to *execute* here may have."""
        allowed = await ensure_async(self.authorizer.is_authorized(
            self, self.current_user, "execute", AUTH_RESOURCE))
        if allowed:
            return data
        records = data if isinstance(data, list) else [data]
        for record in records:
            if isinstance(record, dict) and record.get("url"):
                record["url"] = record["url"].split("?", 1)[0]
        return data

    def send(self, status: int, data: Any) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))


class TunnelsHandler(TunnelAPIHandler):
    """``tunnels``: list them all, open a new one."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.send(200, await self.shown(await self.call(self.service.list)))

    @web.authenticated
    @authorized("execute")  # type: ignore[untyped-decorator]  # logs in; hands out tokens
    async def post(self) -> None:
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError as exc:
            raise ApiError(400, f"the request body is not JSON: {exc}", kind="bad-request") \
                from None
        try:
            spec, wait = parse_open_request(body)
        except TunnelError as exc:
            raise ApiError.from_tunnel_error(exc) from None
        tunnel, opening = await self.call(self.service.begin, spec)
        location = url_path_join(self.base_url, API, "tunnels", tunnel.name)
        self.set_header("Location", location)
        if wait:
            await asyncio.wrap_future(opening)
            try:
                record = self.service.outcome(tunnel)
            except TunnelError as exc:
                raise ApiError.from_tunnel_error(exc, self.service.view(tunnel)) from None
        else:
            record = self.service.view(tunnel)
        self.send(201, record)


class TunnelHandler(TunnelAPIHandler):
    """``tunnels/NAME``: one tunnel's state; close it."""

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        self.send(200, await self.shown(await self.call(self.service.status, name)))

    @web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        self.send(200, await self.call(self.service.close, name))


class AnswerHandler(TunnelAPIHandler):
    """``tunnels/NAME/answer``: answer the question a hop asks (the tunnel's ``prompt``)."""

    @web.authenticated
    @authorized("execute")  # type: ignore[untyped-decorator]  # part of a login
    async def post(self, name: str) -> None:
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError:
            raise ApiError(400, "the request body is not JSON", kind="bad-request") from None
        self.send(202, await self.shown(await self.call(self.service.answer, name, body)))


class HostsHandler(TunnelAPIHandler):
    """``hosts``: the ssh-config Host names to suggest as targets and jump hosts."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.send(200, {"hosts": await self.call(self.service.hosts)})


class KernelsHandler(TunnelAPIHandler):
    """``kernels``: the remote kernels' kernelspecs and running kernels; install a target's."""

    @web.authenticated
    @authorized
    async def get(self) -> None:
        self.send(200, await self.call(self.service.kernels))

    @web.authenticated
    @authorized("execute")  # type: ignore[untyped-decorator]  # logs in to the hosts
    async def post(self) -> None:
        try:
            request = parse_kernels_request(self.json_body())
        except TunnelError as exc:
            raise ApiError.from_tunnel_error(exc) from None
        self.send(201, {"installed": await self.call_slow(self.service.install_kernels,
                                                          request)})


class KernelHandler(TunnelAPIHandler):
    """``kernels/NAME``: remove a kernelspec that jupyter_tunnel installed."""

    @web.authenticated
    @authorized
    async def delete(self, name: str) -> None:
        await self.call(self.service.remove_kernel, name)
        self.set_status(204)
        self.finish()


default_handlers: list[tuple[str, type[TunnelAPIHandler]]] = [
    (rf"{API}/tunnels/?", TunnelsHandler),
    (rf"{API}/tunnels/(?P<name>[^/]+)/?", TunnelHandler),
    (rf"{API}/tunnels/(?P<name>[^/]+)/answer/?", AnswerHandler),
    (rf"{API}/hosts/?", HostsHandler),
    (rf"{API}/kernels/?", KernelsHandler),
    (rf"{API}/kernels/(?P<name>[^/]+)/?", KernelHandler),
]
