"""Local kernelspecs for remote kernels: install, list and remove them.

A spec of ours is an ordinary kernelspec in the user's Jupyter data folder whose
``metadata.kernel_provisioner`` names the ``jupyter-tunnel`` provisioner with the chain
and the remote kernel; ``metadata.jupyter_tunnel`` marks it as ours, so that ``remove``
never touches another.  Its ``argv`` is never run (the provisioner starts the kernel on
the target).  No I/O here beyond the spec folders.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

from ..errors import KernelSpecNotFound, SpecError

__all__ = ["PROVISIONER", "install", "installed", "remove", "spec_name"]

PROVISIONER = "jupyter-tunnel"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}\Z")


def spec_name(target: str, remote_kernel: str) -> str:
    """``beast-python3``: the local name of ``remote_kernel`` on ``target``."""
    host = target.rsplit("@", 1)[-1].split(":", 1)[0]
    name = re.sub(r"[^a-z0-9._-]+", "-", f"{host}-{remote_kernel}".lower()).strip("-._")
    if not _NAME.match(name):
        raise SpecError(f"no kernelspec name can be made of {target!r} and {remote_kernel!r}")
    return name


def _ours(spec: dict[str, Any]) -> bool:
    metadata = spec.get("metadata") or {}
    return isinstance(metadata, dict) and isinstance(metadata.get("jupyter_tunnel"), dict)


def install(target: str, via: list[str], remote_kernel: str, info: dict[str, str], *,
            ssh_config: str = "", cwd: str = "", name: str = "") -> dict[str, Any]:
    """Write the kernelspec of ``remote_kernel`` (``info``: its display_name, language,
    interrupt_mode there) into the user's Jupyter data folder; what was installed."""
    name = name or spec_name(target, remote_kernel)
    if not _NAME.match(name):
        raise SpecError(f"invalid kernelspec name {name!r}")
    existing = KernelSpecManager().find_kernel_specs().get(name)
    if existing is not None:
        try:
            mine = _ours(json.loads((Path(existing) / "kernel.json").read_text()))
        except (OSError, ValueError):
            mine = False
        if not mine:
            raise SpecError(f"a kernelspec named {name!r} exists ({existing}) and jupyter "
                            "tunnel did not install it: left alone; remove it first "
                            "(jupyter kernelspec remove) to install this one")
    host = target.rsplit("@", 1)[-1]
    display = f"{info.get('display_name') or remote_kernel} on {host}"
    config: dict[str, Any] = {"target": target, "via": list(via),
                              "remote_kernel": remote_kernel}
    if ssh_config:
        config["ssh_config"] = ssh_config
    if cwd:
        config["cwd"] = cwd
    spec = {"argv": ["jupyter-tunnel-remote-kernel", "{connection_file}"],
            "display_name": display, "language": info.get("language") or "",
            "interrupt_mode": "message" if info.get("interrupt_mode") == "message"
            else "signal",
            "metadata": {"kernel_provisioner": {"provisioner_name": PROVISIONER,
                                                "config": config},
                         "jupyter_tunnel": {"version": 1}}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        folder.mkdir()
        (folder / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n")
        KernelSpecManager().install_kernel_spec(str(folder), name, user=True)
    return {"name": name, "display_name": display, "remote_kernel": remote_kernel,
            "target": target, "via": list(via)}


def installed() -> list[dict[str, Any]]:
    """The kernelspecs of ours that Jupyter sees."""
    found = []
    for name, entry in sorted(KernelSpecManager().get_all_specs().items()):
        spec = entry.get("spec") or {}
        if not _ours(spec):
            continue
        config = spec["metadata"].get("kernel_provisioner", {}).get("config", {})
        found.append({"name": name, "display_name": spec.get("display_name", name),
                      "remote_kernel": config.get("remote_kernel"),
                      "target": config.get("target"), "via": config.get("via", []),
                      "resource_dir": entry.get("resource_dir")})
    return found


def remove(name: str) -> str:
    """Remove kernelspec ``name`` if it is ours; its folder."""
    ksm = KernelSpecManager()
    try:
        spec = ksm.get_kernel_spec(name)
    except NoSuchKernel:
        raise KernelSpecNotFound(f"no kernelspec named {name!r}") from None
    if not _ours({"metadata": spec.metadata or {}}):
        raise KernelSpecNotFound(f"kernelspec {name!r} was not installed by jupyter tunnel: "
                                 "left alone (jupyter kernelspec remove removes it)")
    shutil.rmtree(spec.resource_dir)
    return str(spec.resource_dir)
