"""``%tunnel kernels list|install|remove|running``: remote kernels from a notebook."""

from __future__ import annotations

from typing import Any

from IPython.core.error import UsageError

from .errors import KernelSpecNotFound, SpecError, TunnelError
from .kernels import service
from .manager import TunnelManager
from .spec import parse_phrase

__all__ = ["KERNEL_COMMANDS", "KERNEL_OPTIONS", "run_kernels"]

KERNEL_COMMANDS = ("list", "install", "remove", "running")
#: the options each subcommand takes
KERNEL_OPTIONS = {"list": {"via", "ssh_config"}, "install": {"via", "ssh_config", "kernel", "cwd"},
                  "remove": {"all"}, "running": set()}
USAGE = ("%tunnel kernels list TARGET [via HOST] | install TARGET [via HOST] [--kernel NAME] "
         "[--cwd DIR] | remove NAME... | remove --all | running")


def _target(words: list[str], args: Any) -> tuple[str, list[str]]:
    if not words:
        raise UsageError(f"say which host runs the kernels: {USAGE}")
    try:
        hop, phrase_via = parse_phrase(words)
    except SpecError as exc:
        raise UsageError(exc.message) from None
    via = [str(h) for h in phrase_via] + [v for item in args.via or [] for v in item.split(",")]
    return str(hop), via


def run_kernels(manager: TunnelManager, words: list[str], args: Any) -> None:
    """Do what ``%tunnel kernels WORDS`` asks; print the outcome."""
    if not words or words[0].lower() not in KERNEL_COMMANDS:
        raise UsageError(USAGE)
    command, words = words[0].lower(), words[1:]
    given = {k for k, v in vars(args).items() if k != "words" and v not in (None, False, [])}
    extra = sorted(given - KERNEL_OPTIONS[command])
    if extra:
        options = ", ".join("--" + e.replace("_", "-") for e in extra)
        raise UsageError(f"{options} does not apply to %tunnel kernels {command}")
    config = args.ssh_config or manager.ssh_config or None
    try:
        if command == "list":
            target, via = _target(words, args)
            for info in service.list_remote(target, via, ssh_config=config, manager=manager):
                print(f"{info['name']:24} {info['display_name']}  ({info['language']})")
        elif command == "install":
            target, via = _target(words, args)
            for item in service.install_remote(target, via, kernels=args.kernel or None,
                                               cwd=args.cwd or "", ssh_config=config,
                                               manager=manager):
                print(f"installed {item['name']}: {item['display_name']}")
            print("Choose it in Kernel > Change Kernel… or the launcher (JupyterLab lists new "
                  "kernels within a minute; reload the page to see them at once).")
        elif command == "remove":
            for name in service.remove(words, remove_all=args.all):
                print(f"removed {name}")
        else:
            if words:
                raise UsageError("%tunnel kernels running takes no arguments")
            found = service.running(manager)
            for k in found:
                print(f"{k['kernel']:20} on {k['target']} (pid {k['remote_pid']}): {k['state']}")
            if not found:
                print("No remote kernels.")
    except (SpecError, KernelSpecNotFound) as exc:
        raise UsageError(exc.message) from None
    except TunnelError as exc:
        raise UsageError(f"{command}: {exc.message}") from None
