"""``open_tunnel``: open a tunnel from Python code, and use it as a context manager.

    from jupyter_tunnel import open_tunnel

    with open_tunnel("beast", via=["unicorn"]) as t:
        print(t.url)        # the remote JupyterLab, through the tunnel
    # closed here

In a kernel where ``%load_ext jupyter_tunnel`` ran, tunnels opened here belong to the
kernel's manager, so ``%tunnel list`` and ``%tunnel close`` know them and they close with
the kernel. Elsewhere they close when the interpreter exits at the latest.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from collections.abc import Iterable

from .login.notebook import default_ask
from .login.questions import Ask
from .login.waiting import Prompt, as_ask
from .manager import TunnelManager
from .spec import TunnelSpec, build_spec
from .tunnel import EventCallback, Tunnel

__all__ = ["default_manager", "make_spec", "open_tunnel"]

_lock = threading.Lock()
_manager: TunnelManager | None = None


def _shell_manager() -> TunnelManager | None:
    """The manager of the ``%tunnel`` magics in the running IPython, if they are loaded."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is None:
        return None
    magics = shell.magics_manager.registry.get("TunnelMagics")
    manager = getattr(magics, "manager", None)
    return manager if isinstance(manager, TunnelManager) else None


def default_manager() -> TunnelManager:
    """The kernel's manager when the magics are loaded, else one for this process.

    This process's own manager closes its tunnels when the interpreter exits.
    """
    global _manager
    shell = _shell_manager()
    if shell is not None:
        return shell
    with _lock:
        if _manager is None:
            _manager = TunnelManager(owner="python")
            atexit.register(_manager.close_all)
        return _manager


def make_spec(target: str | Iterable[str], via: str | Iterable[str] | None = None, *,
              name: str | None = None, local_port: int | str | None = None,
              remote_port: int | str | None = None, launch: bool = False,
              ssh_config: str | os.PathLike[str] | None = None,
              forwards: str | Iterable[str] | None = None,
              reverse: str | Iterable[str] | None = None, jupyter: bool = True) -> TunnelSpec:
    """A validated spec from the arguments of :func:`open_tunnel` (raises ``SpecError``)."""
    def listed(value: str | Iterable[str] | None) -> list[str] | None:
        return None if value is None else [value] if isinstance(value, str) else list(value)

    config = os.path.expanduser(os.fspath(ssh_config)) if ssh_config else None
    return build_spec(target, listed(via), name=name,
                      local_port="" if local_port is None else local_port,
                      remote_port="" if remote_port is None else remote_port,
                      launch=launch, ssh_config=config, forwards=listed(forwards),
                      reverse=listed(reverse), jupyter=jupyter)


def open_tunnel(target: str | Iterable[str], via: str | Iterable[str] | None = None, *,
                name: str | None = None, local_port: int | str | None = None,
                remote_port: int | str | None = None, launch: bool = False,
                ssh_config: str | os.PathLike[str] | None = None,
                forwards: str | Iterable[str] | None = None,
                reverse: str | Iterable[str] | None = None, jupyter: bool = True,
                on_event: EventCallback | None = None,
                manager: TunnelManager | None = None, prompt: Prompt | None = None,
                ask: Ask | None = None) -> Tunnel:
    """Open a tunnel to the Jupyter server on ``target`` and wait until it answers.

    Parameters
    ----------
    target
        The host that runs Jupyter: an ssh-config alias, ``user@host`` or ``user@host:port``;
        a phrase such as ``"beast via unicorn"`` works too.
    via
        Jump hosts, first hop first (a name, a list, or comma separated as with ``ssh -J``).
    name
        The tunnel's name (default: the target's name, made unique).
    local_port, remote_port
        The local port to listen on (default: a free one) and the remote Jupyter's port when
        several run there (default: the newest).
    launch
        Start JupyterLab on the target (through the login shell) if none runs.
    ssh_config
        The OpenSSH client config to read (default: ``~/.ssh/config``, or
        ``c.TunnelManager.ssh_config``).
    forwards, reverse
        Extra forwards as with ``ssh -L`` (``PORT:HOST:HOSTPORT``, HOST as the target sees
        it) and ``ssh -R`` (``[BIND:]PORT:HOST:HOSTPORT``): a spec or a list of them.
    jupyter
        False to forward only ``forwards`` and ``reverse``, looking for no Jupyter.
    on_event
        ``callback(tunnel, event)`` for progress ("hop", "state", "notice", "launch"), called
        from the engine's threads.
    manager
        A :class:`~jupyter_tunnel.manager.TunnelManager` to use (default: see
        :func:`default_manager`).
    prompt
        ``prompt(hop, text, echo) -> answer`` for what a hop asks during the login (a
        one-time code after the key, a password, a key's passphrase): ``hop`` is its alias,
        ``text`` the server's own prompt, ``echo`` False for a secret.  Called from the
        engine's threads, on a reconnect too; it must answer within
        ``TunnelManager.answer_timeout`` (120 s).  Without it (and without ``ask``) the
        question goes to the notebook while a cell runs (an input box under the cell, a
        password box for a secret), else to the terminal if there is one; with neither,
        such a login fails with :class:`~jupyter_tunnel.errors.AnswerNeeded` naming the hop.
    ask
        The same as a ``callback(question) -> answer`` taking a
        :class:`~jupyter_tunnel.login.questions.Question` (hop, label, text, echo, kind).

    Returns the ready :class:`~jupyter_tunnel.tunnel.Tunnel` (``.url``, ``.state``,
    ``.close()``); it is a context manager that closes the tunnel on exit.

    Raises :class:`~jupyter_tunnel.errors.SpecError` (also a ``ValueError``) for bad input
    and another :class:`~jupyter_tunnel.errors.TunnelError` when the tunnel cannot be opened,
    its message naming the hop; nothing is left open then.
    """
    spec = make_spec(target, via, name=name, local_port=local_port, remote_port=remote_port,
                     launch=launch, ssh_config=ssh_config, forwards=forwards, reverse=reverse,
                     jupyter=jupyter)
    manager = manager or default_manager()
    if prompt is not None and ask is None:
        ask = as_ask(prompt)
    if ask is None:
        ask = default_ask(manager.answer_timeout)
    return manager.open(spec, on_event, ask)
