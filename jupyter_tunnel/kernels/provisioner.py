"""The ``jupyter-tunnel`` kernel provisioner: a kernel on the target, used from here.

jupyter_client picks it from a kernelspec's ``metadata.kernel_provisioner`` (installed by
``jupyter tunnel kernels install``).  Launching opens a tunnel of the kernel's own to the
chain (resumable forwards when the target can run the helper), starts the remote kernel
under its nanny (``nanny.py``) and forwards its five ports to free local ports: the
kernel manager connects to those as to a local kernel.  While the tunnel reconnects the
kernel counts as alive (``poll`` returns None), so jupyter_client's restarter leaves it
alone; with resumable forwards its ZMQ connections never see the outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import threading
import time
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import Float, List, Unicode

from ..errors import RemoteKernelError, TunnelError
from ..login.mailbox import Mailbox
from ..manager import TunnelManager
from ..state import State
from .connect import connect
from .nanny import PORT_NAMES
from .remote import RemoteKernels

__all__ = ["TunnelProvisioner"]


class TunnelProvisioner(KernelProvisionerBase):
    """Runs the kernel on ``target`` (through ``via``), reached through a tunnel."""

    target = Unicode(help="The host that runs the kernel (ssh-config alias or user@host)."
                     ).tag(config=True)
    via = List(Unicode(), help="Jump hosts, first hop first.").tag(config=True)
    remote_kernel = Unicode("python3", help="The kernelspec's name on the target."
                            ).tag(config=True)
    ssh_config = Unicode("", help="The OpenSSH client config to read (default: "
                         "~/.ssh/config).").tag(config=True)
    cwd = Unicode("", help="The kernel's working folder on the target (default: the "
                  "root_dir of the Jupyter server there, else the home folder)."
                  ).tag(config=True)
    orphan_after = Float(86400.0, help="Seconds the remote kernel runs on without hearing "
                         "from here before it ends by itself (laptops sleep through nights)."
                         ).tag(config=True)
    poll_interval = Float(3.0, help="Seconds between checks that the remote kernel runs "
                          "(each is a command over SSH; jupyter_client's restarter asks every "
                          "3 s).").tag(config=True)

    _tunnel: Any = None
    _remote: RemoteKernels | None = None
    _rid: str | None = None
    _exit: int | None = None
    _checked = 0.0
    _root_dir = ""
    _stopping = False
    _beat: threading.Event | None = None
    _manager: TunnelManager | None = None
    #: the local ports of the kernel's five, kept across restarts (clients stay connected)
    _ports: dict[str, int] | None = None

    @property
    def _spec_name(self) -> str:
        return str(getattr(self.parent, "kernel_name", "") or "")

    @property
    def has_process(self) -> bool:
        return self._rid is not None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        kwargs = await super().pre_launch(**kwargs)
        kwargs.pop("extra_arguments", None)
        kwargs["cmd"] = []  # nothing runs here: the kernel starts on the target
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        return await asyncio.to_thread(self._launch)

    def _launch(self) -> KernelConnectionInfo:
        if not self.target:
            raise RemoteKernelError("the kernelspec names no target (metadata."
                                    "kernel_provisioner.config.target)")
        tunnel, remote = self._connect()
        key = getattr(getattr(self.parent, "session", None), "key", b"") or \
            secrets.token_hex(32).encode()
        rid = f"k{secrets.token_hex(8)}"
        try:
            answer = remote.start(rid, self.remote_kernel, key.decode("ascii"),
                                  self.cwd or self._root_dir, self.orphan_after)
        except BaseException:
            if self._ports is None:  # a first start: its tunnel must not outlive it
                self._cleanup(restart=False)
            raise
        self._rid, self._exit, self._checked = rid, None, time.monotonic()
        self._stopping = False
        self._start_beat(rid)
        tunnel.set_kernel({"id": rid, "pid": answer["pid"], "started": answer.get("started"),
                           "kernelspec": self._spec_name, "remote_kernel": self.remote_kernel,
                           "host": tunnel.chain[-1].alias,
                           "hops": [{"host": h.alias, "user": h.user, "port": h.port}
                                    for h in tunnel.chain],
                           "ssh_config": tunnel.chain[-1].config_file,
                           "orphan_after": self.orphan_after})
        info: dict[str, Any] = {"ip": "127.0.0.1", "transport": "tcp", "key": key,
                                "signature_scheme": "hmac-sha256",
                                "kernel_name": self._spec_name}
        try:
            for name in PORT_NAMES:
                port = int(answer["ports"][name])
                if self._ports and name in self._ports:  # a restart: same local ports
                    tunnel.retarget_forward(self._ports[name], "127.0.0.1", port)
                    info[name] = self._ports[name]
                else:
                    info[name] = tunnel.add_forward("127.0.0.1", port)
            self._ports = {name: info[name] for name in PORT_NAMES}
        except (TunnelError, KeyError, TypeError, ValueError) as exc:
            # jupyter_client calls no cleanup after a failed launch: leave nothing here
            self._cleanup(restart=self._ports is not None)
            raise RemoteKernelError(f"could not forward the kernel's ports: {exc}") from None
        self.connection_info = info  # type: ignore[assignment]
        return info  # type: ignore[return-value]

    def _connect(self) -> tuple[Any, RemoteKernels]:
        """The kernel's own tunnel (opened on first use) and its target's kernels."""
        old = self._tunnel
        if old is not None and old.state not in (State.CLOSED, State.FAILED):
            assert self._remote is not None
            return old, self._remote
        if old is not None:
            old.close()  # failed: its kept record must not linger in the list
        if self._manager is None:
            # configured like everything under this kernel's manager (c.TunnelManager.*);
            # a hop's question waits on the tunnel's row (the panel, `jupyter tunnel
            # answer NAME`), never on a Jupyter server's terminal
            self._manager = TunnelManager(parent=self, owner="python")
        made = connect(self.target, self.via, ssh_config=self.ssh_config or None,
                       purpose="kernel", manager=self._manager,
                       ask=Mailbox(self._manager.answer_timeout + 5))
        self._tunnel, self._remote, self._root_dir = made.tunnel, made.kernels, made.root_dir
        self._ports = None  # a new tunnel: new local ports
        return made.tunnel, made.kernels

    # --- the kernel's life --------------------------------------------------------------

    async def poll(self) -> int | None:
        if self._rid is None:
            return self._exit if self._exit is not None else 0
        if self._exit is not None:
            return self._exit
        if not self._stopping and time.monotonic() - self._checked < self.poll_interval:
            return None
        self._checked = time.monotonic()
        return await asyncio.to_thread(self._check)

    def _check(self) -> int | None:
        tunnel, remote, rid = self._tunnel, self._remote, self._rid
        if tunnel is None or remote is None or rid is None or tunnel.state is not State.READY:
            return None  # an outage is not the kernel's death
        try:
            status = remote.status(rid)
        except RemoteKernelError as exc:
            if "no such kernel" in exc.message:
                self._exit = 1
                return 1
            return None  # could not ask (the link dropped meanwhile): still alive
        if status.get("alive"):
            return None
        code = status.get("exit")
        self._exit = code if isinstance(code, int) and code != 0 else 1
        return self._exit

    async def shutdown_requested(self, restart: bool = False) -> None:
        self._stopping = True  # from now on each poll asks the target

    async def wait(self) -> int | None:
        self._stopping = True
        while True:
            code = await self.poll()
            if code is not None or self._rid is None:
                return code
            await asyncio.sleep(0.5)

    async def send_signal(self, signum: int) -> None:
        rid, remote = self._rid, self._remote
        if rid is None or remote is None:
            return
        try:
            await asyncio.to_thread(remote.signal, rid, int(signum))
        except RemoteKernelError as exc:  # an outage: the shutdown that may follow goes on
            self.log.warning("could not signal the remote kernel: %s", exc.message)

    async def kill(self, restart: bool = False) -> None:
        await asyncio.to_thread(self._stop_remote)

    async def terminate(self, restart: bool = False) -> None:
        rid, remote = self._rid, self._remote
        if rid is None or remote is None:
            return
        try:
            await asyncio.to_thread(remote.signal, rid, signal.SIGTERM)
        except RemoteKernelError:
            await self.kill(restart)

    async def cleanup(self, restart: bool = False) -> None:
        await asyncio.to_thread(self._cleanup, restart)

    def _stop_remote(self) -> bool:
        """End the remote kernel; False if the target could not be reached."""
        rid, remote = self._rid, self._remote
        if rid is None or remote is None:
            return True
        try:
            remote.stop(rid)
        except RemoteKernelError as exc:
            self.log.warning("the remote kernel %s on %s: %s", rid, remote.host, exc.message)
            return False
        if self._exit is None:
            self._exit = -signal.SIGKILL
        return True

    def _start_beat(self, rid: str) -> None:
        """Tell the nanny we are here even when nobody polls (nbclient, a long cell): it
        ends a kernel whose owner stays away for ``orphan_after``."""
        stop = self._beat = threading.Event()
        every = min(max(self.orphan_after / 4, 1.0), 600.0)

        def beat() -> None:
            while not stop.wait(every):
                tunnel, remote = self._tunnel, self._remote
                if tunnel is None or remote is None or tunnel.state is not State.READY:
                    continue  # an outage: the nanny waits for orphan_after anyway
                with contextlib.suppress(RemoteKernelError):  # the next beat tries again
                    remote.status(rid)

        threading.Thread(target=beat, daemon=True, name=f"jupyter-tunnel-beat-{rid}").start()

    def _cleanup(self, restart: bool) -> None:
        """Nothing left on the target (files, process); here the tunnel and its forwards
        stay for a restart (same ports), else they close."""
        if self._beat is not None:
            self._beat.set()
        stopped = self._stop_remote()
        self._rid = None
        if self._tunnel is not None and stopped:
            # else the record keeps the kernel: once this process is gone, `cleanup` ends
            # it on the target (the tunnel's close keeps a record that names a kernel)
            self._tunnel.set_kernel(None)
        if restart:
            return
        tunnel, self._tunnel, self._remote, self._ports = self._tunnel, None, None, None
        if tunnel is not None:
            tunnel.close()

    async def get_provisioner_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await super().get_provisioner_info()
        info.update(remote_id=self._rid, target=self.target)
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self._rid = provisioner_info.get("remote_id")

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return max(recommended, 10.0)  # the shutdown's answer crosses the tunnel
