"""jupyter_tunnel: reach a remote JupyterLab through SSH jump hosts in one step.

Imports are lazy: loading this package pulls in neither jupyter_server nor SSH.
"""

from __future__ import annotations

from ._version import __version__

__all__ = ["__version__"]
