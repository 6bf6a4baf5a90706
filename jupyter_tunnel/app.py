"""The jupyter-server extension: one TunnelManager per server and the REST API for the panel."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from types import FrameType

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Int, List, Type, Unicode, default

from ._version import __version__
from .handlers import SERVICE_KEY, default_handlers
from .manager import TunnelManager
from .rest_service import TunnelService
from .serve import serve_handlers
from .serve_rules import serve_prefix


class TunnelExtensionApp(ExtensionApp):
    """Opens, lists and closes SSH tunnels to remote Jupyter servers for JupyterLab's panel.

    Configure it in ``jupyter_server_config.py`` (or ``jupyter_tunnel_config.py``, which the
    ``jupyter tunnel`` command reads too)::

        c.TunnelManager.ssh_config = "/home/alice/.ssh/config"
        c.TunnelExtensionApp.allowed_targets = ["beast", "unicorn", "*.cluster.example.org"]
    """

    name = "jupyter_tunnel"
    version = __version__
    description = __doc__
    load_other_extensions = True
    classes = [TunnelManager]  # noqa: RUF012  (traitlets declares classes as a class list)

    allowed_targets = List(
        Unicode(),
        default_value=None,
        allow_none=True,
        help="""Hosts that this server may open tunnels to (every hop: jump hosts and target).
        Unset (None): the Host entries of the ssh config (TunnelManager.ssh_config), and any
        host given with its user ("alice@gpu7"). A list: shell-style patterns matched against
        each hop's host ("beast", "gpu*", "*.cluster.example.org"); a pattern with "@" matches
        "user@host" instead ("alice@*"). An empty list allows none: the panel can then only
        show and close tunnels. Requests can never pass ssh options, commands or config files.""",
    ).tag(config=True)

    manager_class = Type(
        default_value=TunnelManager,
        klass=TunnelManager,
        help="The TunnelManager class the server uses (configured as c.TunnelManager).",
    ).tag(config=True)

    max_concurrent_opens = Int(
        8,
        help="Tunnels that may be opening at the same time (each takes a thread for a few "
        "seconds); further requests wait their turn. Listing and closing never wait for them.",
    ).tag(config=True)

    cleanup_on_start = Bool(
        True,
        help="Remove records of tunnels whose owner process died when the server starts.",
    ).tag(config=True)

    @default("config_file_name")
    def _default_config_file_name(self) -> str:
        # the same file as the `jupyter tunnel` command: one place for c.TunnelManager
        return "jupyter_tunnel_config"

    def initialize_settings(self) -> None:
        """Create the server's TunnelManager and the service the handlers use."""
        self.tunnel_manager = self.manager_class(parent=self, owner="server", log=self.log)
        base_url = self.serverapp.base_url if self.serverapp else "/"
        self.service = TunnelService(self.tunnel_manager, self.allowed_targets,
                                     max_opens=self.max_concurrent_opens,
                                     serve_under=serve_prefix(base_url))
        self.settings[SERVICE_KEY] = self.service
        if self.cleanup_on_start:
            self.service.executor.submit(self._cleanup)
        self._stop_cleanly_on_sigint()
        self.log.info("jupyter_tunnel %s: REST API at %sjupyter-tunnel/api/, ssh config %s",
                      __version__, self.serverapp.base_url if self.serverapp else "/",
                      self.tunnel_manager.ssh_config or "~/.ssh/config")

    def _stop_cleanly_on_sigint(self) -> None:
        """Under JupyterHub, let SIGINT stop the server as SIGTERM does.

        A hub's spawner stops a single-user server with SIGINT first.  jupyter_server handles
        SIGINT only when stdin is a terminal, which under a spawner it is not, so Python's
        KeyboardInterrupt ends the server's loop and skips its cleanup: no kernel is shut
        down and no extension stopped.  A local kernel notices its parent is gone; a remote
        kernel on beast would not (until ``orphan_after``), nor would this server's tunnels
        be closed in order.
        """
        server = self.serverapp
        if (server is None or not os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
                or threading.current_thread() is not threading.main_thread()
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
            return

        def stop(signum: int, frame: FrameType | None) -> None:
            self.log.info("jupyter_tunnel: SIGINT under JupyterHub: stopping the server, "
                          "its tunnels and kernels")
            server.stop(from_signal=True)

        signal.signal(signal.SIGINT, stop)

    def _cleanup(self) -> None:
        try:
            report = self.tunnel_manager.cleanup()  # logs what it removed and ended
        except Exception:
            self.log.exception("jupyter_tunnel: cleaning up after crashed tunnels failed")
            return
        for item in report.get("left") or []:
            self.log.warning("jupyter_tunnel cleanup: left alone: %s", item)

    def initialize_handlers(self) -> None:
        """Add the REST handlers under ``{base_url}jupyter-tunnel/api/`` and the served
        remote JupyterLabs under ``{base_url}jupyter-tunnel/lab/NAME/``."""
        self.handlers.extend(default_handlers)
        self.handlers.extend(serve_handlers)

    async def stop_extension(self) -> None:
        """Close the tunnels this server opened."""
        service: TunnelService | None = getattr(self, "service", None)
        if service is None:
            return
        names = [t.name for t in service.manager.tunnels()]
        if names:
            self.log.info("jupyter_tunnel: closing %s", ", ".join(names))
        await asyncio.get_running_loop().run_in_executor(None, service.shutdown)
