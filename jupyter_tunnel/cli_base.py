"""Shared parts of the `jupyter tunnel` subcommands."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

from jupyter_core.application import JupyterApp, base_aliases, base_flags
from traitlets import Bool, default

from ._version import __version__
from .errors import ConfigError, SpecError, TunnelError
from .manager import TunnelManager

common_flags: dict[str, Any] = {
    **base_flags,
    "json": ({"BaseTunnelApp": {"json_output": True}}, "Print JSON instead of text."),
}
common_aliases: dict[str, Any] = {**base_aliases, "ssh-config": "TunnelManager.ssh_config"}


class BaseTunnelApp(JupyterApp):
    """Shared parts of the `jupyter tunnel` subcommands."""

    version = __version__
    classes = [TunnelManager]
    flags = common_flags
    aliases = common_aliases
    json_output = Bool(False, help="Print JSON instead of text.").tag(config=True)
    owner_kind = "cli"

    @default("config_file_name")
    def _config_file_name_default(self) -> str:
        return "jupyter_tunnel_config"

    def parse_command_line(self, argv: list[str] | None = None) -> None:
        """Refuse unknown options (traitlets would only warn), then parse as usual."""
        args = list(sys.argv[1:] if argv is None else argv)
        if not (self.subcommands and args and args[0] in self.subcommands):
            self._check_options(args)
        super().parse_command_line(argv)

    def _check_options(self, args: list[str]) -> None:
        if "--json" in args:
            self.json_output = True  # so that an error below is reported as JSON too
        known = {"help", "help-all", "h", "version"}
        known |= {n for k in self.flags for n in ((k,) if isinstance(k, str) else k)}
        aliases = {n for k in self.aliases for n in ((k,) if isinstance(k, str) else k)}
        skip, previous = False, ""
        for arg in args:
            if skip:
                skip = False
                if arg.startswith("--") and arg[2:].split("=", 1)[0] in known | aliases:
                    self.fail(SpecError(f"option {previous} needs a value"))
                if arg.startswith("-"):
                    self.fail(SpecError(
                        f"invalid value {arg!r} for {previous}: host names and values cannot "
                        "start with '-'"))
                continue
            previous = arg
            if arg == "--":
                break
            if not arg.startswith("-") or arg == "-":
                continue
            name = arg.lstrip("-").split("=", 1)[0]
            if name in aliases:
                skip = "=" not in arg
            elif name not in known and "." not in name:
                self.fail(SpecError(
                    f"unknown option {arg!r} (host names cannot start with '-'); "
                    "see --help for the options"))
        if skip:
            self.fail(SpecError(f"option {previous} needs a value"))

    def manager(self) -> TunnelManager:
        """A manager configured from this app's config."""
        if not hasattr(self, "_manager"):
            self._manager = TunnelManager(parent=self, owner=self.owner_kind)
        return self._manager

    def say(self, text: str) -> None:
        """Progress for people, on stderr; silent with --json."""
        if not self.json_output:
            print(text, file=sys.stderr, flush=True)

    def fail(self, exc: TunnelError) -> NoReturn:
        """Report an error and exit non-zero."""
        if self.json_output:
            print(json.dumps(exc.to_dict()), flush=True)
        else:
            print(f"jupyter tunnel: error: {exc.message}", file=sys.stderr, flush=True)
        self.quit(2 if isinstance(exc, (SpecError, ConfigError)) else 1)

    def quit(self, code: int) -> NoReturn:
        """Exit with ``code`` (``Application.exit`` is not typed as never returning)."""
        self.exit(code)
        raise SystemExit(code)

    def no_args(self) -> None:
        """Refuse stray words after a subcommand that takes none."""
        if self.extra_args:
            self.fail(SpecError(f"unexpected argument {self.extra_args[0]!r}"))

    def name_arg(self) -> str:
        """The one tunnel name a subcommand takes."""
        if len(self.extra_args) != 1:
            self.fail(SpecError(f"give exactly one tunnel name (got {len(self.extra_args)})"))
        return str(self.extra_args[0])
