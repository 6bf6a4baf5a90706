"""What may be served under ``{base_url}jupyter-tunnel/lab/NAME/``, and how: pure rules.

A remote JupyterLab can be served through the user's own Jupyter server (the browser under
JupyterHub cannot reach 127.0.0.1 of the server's machine) only when its base URL is that
very path: its pages then name their own URLs correctly.  jupyter_tunnel can give it that
base URL when it starts the server itself (launch).  No tornado here: :mod:`.serve` proxies.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable
from typing import Any

from .errors import SpecError
from .spec import check_base_url

#: the served remote servers' path under the Jupyter server's base URL
SERVE_PATH = "jupyter-tunnel/lab"

#: never sent upstream: the browser's credentials for *this* server, and what the proxy sets
DROP_UPSTREAM = frozenset({
    "authorization", "cookie", "x-xsrftoken", "x-csrftoken", "host", "origin", "referer",
    "content-length", "accept-encoding", "proxy-authorization",
})
#: query parameters never sent upstream: credentials for *this* server
DROP_QUERY = frozenset({"token", "_xsrf"})
#: hop-by-hop headers (RFC 9110 7.6.1), never passed on either way
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "trailers", "transfer-encoding", "upgrade", "proxy-connection",
})
#: never sent to the browser: the remote server's cookies, and lengths the proxy recomputes
DROP_DOWNSTREAM = frozenset({"set-cookie", "content-length", "content-encoding"})


def serve_prefix(server_base_url: str) -> str | None:
    """``{base_url}jupyter-tunnel/lab/`` of this Jupyter server; None if that path cannot be
    given to a launched server (characters outside :func:`.spec.check_base_url`'s set)."""
    prefix = "/" + "/".join(p for p in [*server_base_url.split("/"), *SERVE_PATH.split("/")]
                            if p) + "/"
    try:
        return check_base_url(prefix)
    except SpecError:
        return None


def served(record: dict[str, Any], prefix: str | None, own: bool) -> tuple[str | None, str]:
    """``(served_url, "")`` for a tunnel this server can serve, else ``(None, why)``.

    ``record`` is the tunnel's JSON; ``own``: the tunnel belongs to this server's manager.
    """
    target = str(record.get("target") or record.get("name"))
    if prefix is None:
        return None, ("this Jupyter server's base URL has characters a launched server's "
                      "base URL cannot have")
    if record.get("jupyter") is False:
        return None, "it forwards no Jupyter server"
    if not own:
        return None, (f"it belongs to another process ({record.get('owner')}, pid "
                      f"{record.get('pid')}); only tunnels opened in this JupyterLab's panel "
                      "can be served through it")
    base = record.get("remote_base_url")
    wanted = f"{prefix}{record.get('name')}/"
    if base is None:
        return None, f"it is {record.get('state')}: {target}'s Jupyter is not found yet"
    if base != wanted:
        return None, (f"{target}'s Jupyter runs at base URL {base} and cannot be served under "
                      f"{wanted}; open it with 'Start JupyterLab there' (launch) to have one "
                      "that can")
    return wanted + "lab", ""


def upstream_headers(headers: Iterable[tuple[str, str]], token: str) -> list[tuple[str, str]]:
    """The browser's request headers as sent to the remote server: its credentials for this
    server dropped, the remote token added (when the server has one)."""
    kept = [(k, v) for k, v in headers
            if k.lower() not in DROP_UPSTREAM and k.lower() not in HOP_BY_HOP
            and not k.lower().startswith("sec-websocket-")]
    if token:
        kept.append(("Authorization", f"token {token}"))
    return kept


def upstream_query(query: str) -> str:
    """The request's query as sent to the remote server: without this server's credentials
    (``token``, a hub token included, and ``_xsrf``), otherwise unchanged."""
    kept = [part for part in query.split("&")
            if part and urllib.parse.unquote_plus(part.split("=", 1)[0]) not in DROP_QUERY]
    return "&".join(kept)


def downstream_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """The remote server's answer headers as passed to the browser."""
    return [(k, v) for k, v in headers
            if k.lower() not in DROP_DOWNSTREAM and k.lower() not in HOP_BY_HOP]



def without_token(body: bytes, content_type: str, token: str) -> bytes:
    """A remote JupyterLab page with its own token taken out of its page config.

    JupyterLab writes the server's token into every page (``"token": "…"`` in
    ``jupyter-config-data``) for its script to send back in ``Authorization``.  Served here,
    the browser must not get it, and must not send it to this server either: with the entry
    emptied the script authenticates with this server's cookie, and the proxy adds the
    token upstream.  Only that one entry of an HTML page is changed; nothing else is.
    """
    if not token or not content_type.lower().startswith("text/html"):
        return body
    return re.sub(rb'"token":\s*"' + re.escape(token.encode()) + rb'"', b'"token": ""', body)
