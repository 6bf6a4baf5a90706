"""jupyter_tunnel: reach a remote JupyterLab through SSH jump hosts in one step.

Imports are lazy: loading this package pulls in neither jupyter_server nor SSH,
so a kernel that loads the magics does not pay for the server extension.
"""

from __future__ import annotations

import logging
from typing import Any

from ._version import __version__

# a library logs; the application decides where to (a kernel must not print tracebacks
# of background threads into whatever cell runs)
logging.getLogger("jupyter_tunnel").addHandler(logging.NullHandler())

__all__ = ["__version__", "open_tunnel"]


def __getattr__(name: str) -> Any:
    if name == "open_tunnel":
        from .api import open_tunnel

        return open_tunnel
    raise AttributeError(f"module 'jupyter_tunnel' has no attribute {name!r}")


def _jupyter_server_extension_points() -> list[dict[str, Any]]:
    from .app import TunnelExtensionApp

    return [{"module": "jupyter_tunnel.app", "app": TunnelExtensionApp}]


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    return [{"src": "labextension", "dest": "jupyter-tunnel"}]


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext jupyter_tunnel``: register the ``%tunnel`` magics."""
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext jupyter_tunnel``: close the tunnels this kernel opened."""
    from .magics import unload_ipython_extension as unload

    unload(ipython)
