"""`jupyter tunnel kernels list|install|remove`: a target's kernels in your own Jupyter."""

from __future__ import annotations

import json

from traitlets import Bool, List, Unicode

from .cli_base import BaseTunnelApp, common_flags
from .errors import SpecError, TunnelError
from .kernels import service
from .spec import parse_phrase


class _KernelsBase(BaseTunnelApp):
    aliases = {**BaseTunnelApp.aliases, "via": "_KernelsBase.via"}
    via = List(Unicode(), help="Jump hosts, first hop first (repeatable or comma separated)."
               ).tag(config=True)

    def target_arg(self) -> tuple[str, list[str]]:
        """TARGET (a phrase such as ``beast via unicorn`` works too) and the hops."""
        if not self.extra_args:
            self.fail(SpecError("give the host that runs the kernels, e.g. beast --via unicorn"))
        try:
            hop, phrase_via = parse_phrase([str(a) for a in self.extra_args])
        except TunnelError as exc:
            self.fail(exc)
        via = [str(h) for h in phrase_via] + [v for item in self.via for v in item.split(",")]
        return str(hop), via

    def ssh_config(self) -> str | None:
        return self.manager().ssh_config or None

    def hello(self, target: str, via: list[str]) -> None:
        self.say(f"Connecting to {target}" + (f" via {', '.join(via)}" if via else "") + "...")


class ListKernelsApp(_KernelsBase):
    """jupyter tunnel kernels list TARGET."""

    name = "jupyter-tunnel-kernels-list"
    description = "List the kernels (kernelspecs) TARGET offers, as its own Jupyter lists them."
    examples = "jupyter tunnel kernels list beast --via unicorn --json"

    def start(self) -> None:
        target, via = self.target_arg()
        self.hello(target, via)
        try:
            found = service.list_remote(target, via, ssh_config=self.ssh_config(),
                                        manager=self.manager())
        except TunnelError as exc:
            self.fail(exc)
        if self.json_output:
            print(json.dumps({"kernels": found}))
            return
        for info in found:
            print(f"{info['name']:24} {info['display_name']}  ({info['language']})")
        if not found:
            print(f"{target} offers no kernels")


class InstallKernelsApp(_KernelsBase):
    """jupyter tunnel kernels install TARGET."""

    name = "jupyter-tunnel-kernels-install"
    description = """Install a local kernelspec for each kernel TARGET offers (or those named
    with --kernel): e.g. beast-python3, shown as "Python 3 (ipykernel) on beast", so that
    JupyterLab, jupyter console and nbclient can run them on TARGET."""
    examples = """
jupyter tunnel kernels install beast --via unicorn
jupyter tunnel kernels install beast --via unicorn --kernel python3 --cwd /data/project
"""
    aliases = {**_KernelsBase.aliases, "kernel": "InstallKernelsApp.kernels",
               "cwd": "InstallKernelsApp.cwd"}
    kernels = List(Unicode(), help="Remote kernels to install (default: all).").tag(config=True)
    cwd = Unicode("", help="The kernels' working folder on TARGET (default: the root_dir of "
                  "its Jupyter server, else the home folder).").tag(config=True)

    def start(self) -> None:
        target, via = self.target_arg()
        self.hello(target, via)
        try:
            installed = service.install_remote(target, via, kernels=self.kernels, cwd=self.cwd,
                                               ssh_config=self.ssh_config(),
                                               manager=self.manager())
        except TunnelError as exc:
            self.fail(exc)
        if self.json_output:
            print(json.dumps({"installed": installed}))
            return
        for item in installed:
            print(f"installed {item['name']}: {item['display_name']}")


class RemoveKernelsApp(BaseTunnelApp):
    """jupyter tunnel kernels remove NAME... | --all."""

    name = "jupyter-tunnel-kernels-remove"
    description = "Remove kernelspecs installed by jupyter tunnel kernels install."
    examples = "jupyter tunnel kernels remove beast-python3\njupyter tunnel kernels remove --all"
    flags = {**common_flags, "all": ({"RemoveKernelsApp": {"remove_all": True}},
                                     "Remove every kernelspec jupyter tunnel installed.")}
    remove_all = Bool(False, help="Remove all of ours.").tag(config=True)

    def start(self) -> None:
        try:
            removed = service.remove([str(a) for a in self.extra_args],
                                     remove_all=self.remove_all)
        except TunnelError as exc:
            self.fail(exc)
        if self.json_output:
            print(json.dumps({"removed": removed}))
        else:
            print("\n".join(f"removed {n}" for n in removed) or "no kernelspec of ours")


class RunningKernelsApp(BaseTunnelApp):
    """jupyter tunnel kernels running."""

    name = "jupyter-tunnel-kernels-running"
    description = """The remote kernels started through jupyter tunnel on this machine:
    kernelspec, owner (kind and pid), tunnel, target, remote pid, state (orphaned when
    their owner died: jupyter tunnel cleanup ends them on the target)."""

    def start(self) -> None:
        self.no_args()
        found = service.running(self.manager())
        if self.json_output:
            print(json.dumps({"kernels": found}))
            return
        for k in found:
            print(f"{k['kernel']:20} on {k['target']} (pid {k['remote_pid']}) via tunnel "
                  f"{k['tunnel']}, owner {k['owner']} {k['owner_pid']}: {k['state']}")
        if not found:
            print("No remote kernels.")


class KernelsApp(BaseTunnelApp):
    """jupyter tunnel kernels."""

    name = "jupyter-tunnel-kernels"
    description = "Use a remote host's kernels from your own Jupyter, through a tunnel."
    subcommands = {
        "list": (ListKernelsApp, ListKernelsApp.description),
        "install": (InstallKernelsApp, "Install local kernelspecs for TARGET's kernels."),
        "remove": (RemoveKernelsApp, RemoveKernelsApp.description),
        "running": (RunningKernelsApp, "The remote kernels started from this machine."),
    }

    def start(self) -> None:
        if self.subapp is None:
            self.fail(SpecError("use one of: jupyter tunnel kernels list|install|remove|"
                                "running"))
        super().start()
