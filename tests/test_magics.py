"""`%tunnel`, its live card and `open_tunnel`, in a real kernel (nbclient) through the real
network: laptop -> unicorn -> beast."""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from conftest import port_is_free
from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from nbformat import NotebookNode
from test_open import api_status, registry_files

from jupyter_tunnel.sandbox import Sandbox

pytestmark = pytest.mark.network

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def kernel_env(tmp_path: Path) -> dict[str, str]:
    """The kernel's environment: this venv first on PATH, private IPython dir, and (from the
    autouse fixture) the private JUPYTER_RUNTIME_DIR, so the registry is the test's."""
    bindir = str(Path(sys.executable).parent)
    ipython_dir = tmp_path / "ipython"
    ipython_dir.mkdir(exist_ok=True)
    return {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '')}",
            "IPYTHONDIR": str(ipython_dir)}


class Kernel:
    """A real ipykernel, driven one cell at a time through nbclient (widget state kept)."""

    def __init__(self, tmp_path: Path) -> None:
        self.nb = nbformat.v4.new_notebook()
        self.client = NotebookClient(self.nb, kernel_name="python3", timeout=120,
                                     store_widget_state=True,
                                     resources={"metadata": {"path": str(tmp_path)}})
        self.env = kernel_env(tmp_path)

    def run(self, source: str, *, error: bool = False) -> NotebookNode:
        """Execute one cell; ``error``: the cell is expected to fail (no exception here)."""
        cell = nbformat.v4.new_code_cell(source)
        if error:
            cell.metadata["tags"] = ["raises-exception"]
        self.nb.cells.append(cell)
        self.client.execute_cell(cell, len(self.nb.cells) - 1)
        return cell

    def widgets(self, css_class: str) -> list[dict[str, Any]]:
        """The state of every widget carrying ``css_class``, oldest first."""
        return [s for s in self.client.widget_state.values()
                if css_class in (s.get("_dom_classes") or ())]

    def save(self, path: Path) -> NotebookNode:
        """Write the notebook with its widget state (as nbclient does after a full run)."""
        self.client.set_widgets_metadata()
        nbformat.write(self.nb, str(path))
        return self.nb


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    k = Kernel(tmp_path)
    with k.client.setup_kernel(env=k.env):
        yield k  # leaving shuts the kernel down gracefully, as JupyterLab does


@pytest.fixture(autouse=True)
def fresh_default_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    """open_tunnel's process-wide manager, made anew for each test's private registry."""
    import jupyter_tunnel.api

    monkeypatch.setattr(jupyter_tunnel.api, "_manager", None)


def text(cell: NotebookNode, name: str = "stdout") -> str:
    return "".join(o.get("text", "") for o in cell.outputs
                   if o.output_type == "stream" and o.name == name)


def errors(cell: NotebookNode) -> list[NotebookNode]:
    return [o for o in cell.outputs if o.output_type == "error"]


def widget_views(cell: NotebookNode) -> list[str]:
    return [o.data["application/vnd.jupyter.widget-view+json"]["model_id"] for o in cell.outputs
            if o.output_type == "display_data"
            and "application/vnd.jupyter.widget-view+json" in o.get("data", {})]


def loaded(kernel: Kernel, net: Sandbox) -> None:
    cell = kernel.run("%load_ext jupyter_tunnel\n"
                      f"%config TunnelManager.ssh_config = {str(net.ssh_config)!r}")
    assert cell.outputs == [], cell.outputs


def test_tunnel_magic_card_link_reuse_list_and_close(kernel: Kernel, net: Sandbox,
                                                     runtime_dir: Path, tmp_path: Path) -> None:
    loaded(kernel, net)
    opened = kernel.run("t = %tunnel beast via unicorn\nprint(t.url)\nprint(t.state.value)")
    assert errors(opened) == [] and len(widget_views(opened)) == 1
    url, state = text(opened).split()
    assert state == "ready" and url.startswith("http://127.0.0.1:")
    assert api_status(url) == 200  # the link works from here, as a browser tab would use it
    port = urllib.parse.urlsplit(url).port
    assert port is not None and registry_files(runtime_dir) == ["beast.json"]
    record = json.loads((runtime_dir / "jupyter_tunnel" / "beast.json").read_text())
    assert record["owner"] == "kernel" and record["state"] == "ready"

    # the card, as its widget state stands: ready, the hops done, the link with the token
    [badge] = kernel.widgets("jt-state")
    assert 'data-state="ready"' in badge["value"]
    [link] = kernel.widgets("jt-url")
    assert f'href="{url}"' in link["value"]
    [hops] = kernel.widgets("jt-hops")
    assert "✓ unicorn" in hops["value"] and "✓ beast" in hops["value"]
    [card] = kernel.widgets("jt-card")
    assert len(card["children"]) == 6
    saved = kernel.save(tmp_path / "saved.ipynb")
    state = saved.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    assert any(url in str(m["state"].get("value", "")) for m in state.values())

    # counters are refreshed from a thread while the card's cell is done
    def uptime() -> int:
        value = kernel.widgets("jt-stats")[0]["value"]
        found = re.search(r"up (?:(\d+)m )?(\d+) ?s", value)
        assert found, value
        return int(found.group(1) or 0) * 60 + int(found.group(2))

    before = uptime()
    kernel.run("import time; time.sleep(2.5)")
    assert uptime() > before  # the card counted on by itself while no cell of it ran

    # the same target again: the live tunnel is reused, its card shown again with a note
    again = kernel.run("t2 = %tunnel beast --via unicorn\nprint(t2 is t)")
    assert text(again).strip() == "True"
    assert "reusing it" in kernel.widgets("jt-message")[-1]["value"]
    assert registry_files(runtime_dir) == ["beast.json"]

    # a Tunnel as a cell's result shows its card; the kernel never loads jupyter_server
    shown = kernel.run("t")
    assert len(widget_views(shown)) == 1
    assert text(kernel.run("import sys; print('jupyter_server' in sys.modules)")) == "False\n"

    listed = kernel.run("%tunnel list")
    [table] = kernel.widgets("jt-table")
    assert len(widget_views(listed)) == 1
    assert "beast" in table["value"] and 'data-state="ready"' in table["value"]
    assert "this kernel" in table["value"] and "unicorn → beast" in table["value"]
    # the table follows the registry: a tunnel of another process shows up by itself
    from jupyter_tunnel import open_tunnel

    with open_tunnel("beast", via="unicorn", ssh_config=net.ssh_config, name="elsewhere"):
        for _ in range(10):  # the table refreshes every 2 s; under load it may take longer
            kernel.run("time.sleep(1)")
            [table] = kernel.widgets("jt-table")
            if "elsewhere" in table["value"]:
                break
        assert "elsewhere" in table["value"] and f"python ({os.getpid()})" in table["value"]
        assert "?token=" not in table["value"].split("elsewhere", 1)[1]  # not our tunnel

    clash = kernel.run("%tunnel beast-via-unicorn --name beast", error=True)
    assert "UsageError: a tunnel named 'beast' is already open" in text(clash, "stderr")

    closed = kernel.run("%tunnel close beast")
    assert text(closed) == "closed beast\n"
    assert port_is_free(port) and registry_files(runtime_dir) == []
    first, reused = kernel.widgets("jt-state")[:2]
    assert 'data-state="closed"' in first["value"] and 'data-state="closed"' in reused["value"]
    status = kernel.run("%tunnel status beast", error=True)
    assert "UsageError: no tunnel named 'beast'" in text(status, "stderr")


def test_kernel_shutdown_and_restart_close_what_the_kernel_opened(
        net: Sandbox, runtime_dir: Path, tmp_path: Path) -> None:
    k = Kernel(tmp_path)
    # the ssh config from ipython_config.py this time (the magics' manager has the shell as
    # its parent)
    profile = tmp_path / "ipython" / "profile_default"
    profile.mkdir(parents=True)
    (profile / "ipython_config.py").write_text(
        f"c.TunnelManager.ssh_config = {str(net.ssh_config)!r}\n")
    with k.client.setup_kernel(env=k.env):
        k.run("%load_ext jupyter_tunnel")
        cell = k.run("from jupyter_tunnel import open_tunnel\n"
                     "a = %tunnel beast via unicorn --name magic\n"
                     "b = open_tunnel('beast', via='unicorn', name='api')\n"
                     "print(a.local_port, b.local_port, b.owner)")
        ports = [int(p) for p in text(cell).split()[:2]]
        assert text(cell).split()[2] == "kernel"
        assert not any(port_is_free(p) for p in ports)
        assert registry_files(runtime_dir) == ["api.json", "magic.json"]
        # a restart (as JupyterLab's "Restart Kernel"): the old process closes its tunnels
        run_sync(k.client.km.restart_kernel)(now=False)
        assert all(port_is_free(p) for p in ports)
        assert registry_files(runtime_dir) == []
        k.run("%load_ext jupyter_tunnel")
        cell = k.run("t = %tunnel beast via unicorn\nprint(t.local_port)")
        port = int(text(cell))
        assert not port_is_free(port)
        # unloading the extension closes them too, and removes %tunnel
        k.run("%unload_ext jupyter_tunnel")
        assert port_is_free(port) and registry_files(runtime_dir) == []
        gone = k.run("%tunnel list", error=True)
        assert "UsageError: Line magic function `%tunnel` not found" in text(gone, "stderr")
        k.run("%load_ext jupyter_tunnel")
        cell = k.run("t = %tunnel beast via unicorn\nprint(t.local_port)")
        port = int(text(cell))
    # the context shut the kernel down as JupyterLab does on "Shut Down Kernel"
    assert port_is_free(port)
    assert registry_files(runtime_dir) == []


def test_bad_input_is_a_usage_error_and_failures_name_the_hop(kernel: Kernel, net: Sandbox,
                                                              runtime_dir: Path) -> None:
    loaded(kernel, net)
    cases = {
        "%tunnel": "UsageError: say which host runs Jupyter, e.g. %tunnel beast via unicorn",
        "%tunnel via unicorn": "UsageError: no target given before 'via'",
        "%tunnel beast via unicorn --local-port 70000":
            "UsageError: local port must be a number from 1 to 65535, not 70000",
        "%tunnel beast --remote-port http": "UsageError: remote port must be a number",
        "%tunnel beast --bogus": "UsageError: unrecognized arguments: --bogus",
        "%tunnel 'a;b' via unicorn": "UsageError: invalid host name 'a;b'",
        "%tunnel list --via unicorn": "UsageError: --via does not apply to %tunnel list",
        "%tunnel close": "UsageError: %tunnel close needs a tunnel name",
        "%tunnel beast via unicorn --ssh-config /nonexistent/config": "/nonexistent/config",
        "%tunnel beast via unicorn --no-jupyter": "UsageError: nothing to forward",
    }
    for line, message in cases.items():
        cell = kernel.run(line, error=True)
        err = text(cell, "stderr")
        assert message in err, (line, cell.outputs)
        assert errors(cell) == [] and "Traceback" not in err, (line, cell.outputs)
        assert widget_views(cell) == []
    # a host unicorn cannot reach: the engine's message, naming the hop, in one line
    cell = kernel.run("%tunnel nosuchhost via unicorn", error=True)
    [error] = errors(cell)
    assert error.ename == "HopUnreachable"
    [line] = [ANSI.sub("", x) for x in error.traceback]
    assert line.startswith("HopUnreachable: unicorn could not connect to nosuchhost")
    [badge] = kernel.widgets("jt-state")
    assert 'data-state="failed"' in badge["value"]
    [message] = kernel.widgets("jt-message")
    assert "unicorn could not connect to nosuchhost" in message["value"]
    [hops] = kernel.widgets("jt-hops")
    assert "✓ unicorn" in hops["value"] and "✗ nosuchhost" in hops["value"]
    assert registry_files(runtime_dir) == []
    # the CLI's --forward and --no-jupyter work here too
    assert net.jupyter is not None
    fwd = kernel.run(f"f = %tunnel beast via unicorn --no-jupyter --name fwd --forward "
                     f"0:127.0.0.1:{net.jupyter.port}\nprint(f.forwards[0]['local_port'])")
    port = int(text(fwd))
    url = f"http://127.0.0.1:{port}/lab?token={net.jupyter.token}"
    assert api_status(url) == 200
    assert "forwards through beast" in kernel.widgets("jt-title")[-1]["value"]
    assert f"local 127.0.0.1:{port} → 127.0.0.1:{net.jupyter.port}" in \
        kernel.widgets("jt-url")[-1]["value"]
    help_text = kernel.run("print(get_ipython().find_line_magic('tunnel').__doc__)")
    assert "%tunnel beast via unicorn" in text(help_text)
    assert "--ssh-config FILE" in text(help_text) and "--local-port PORT" in text(help_text)


def test_open_tunnel_context_manager(net: Sandbox, runtime_dir: Path) -> None:
    from jupyter_tunnel import open_tunnel
    from jupyter_tunnel.errors import SpecError

    events: list[str] = []
    with open_tunnel("beast", via=["unicorn"], ssh_config=net.ssh_config,
                     on_event=lambda t, e: events.append(t.state.value)) as t:
        assert t.url is not None and api_status(t.url) == 200
        assert t.owner == "python" and t.hops == ["unicorn", "beast"]
        assert registry_files(runtime_dir) == ["beast.json"]
        port = t.local_port
    assert t.state.value == "closed" and events[-1] == "closed" and "ready" in events
    assert port is not None and port_is_free(port)
    assert registry_files(runtime_dir) == []
    with pytest.raises(SpecError, match="local port must be a number"):
        open_tunnel("beast via unicorn", local_port="x")
    with pytest.raises(ValueError, match="no target given"):
        open_tunnel("")


def test_cleanup_on_load_removes_records_of_dead_kernels(kernel: Kernel, net: Sandbox,
                                                         runtime_dir: Path) -> None:
    folder = runtime_dir / "jupyter_tunnel"
    folder.mkdir(mode=0o700, parents=True)
    dead = {"name": "ghost", "state": "ready", "owner": "kernel", "pid": 2**22 + 7,
            "started": 1, "hops": ["unicorn", "beast"], "local_port": None}
    (folder / "ghost.json").write_text(json.dumps(dead))
    (folder / "ghost.json").chmod(0o600)
    cell = kernel.run("%load_ext jupyter_tunnel")
    assert "removed 1 record(s) of tunnels whose process is gone: ghost" in text(cell)
    assert registry_files(runtime_dir) == []
    assert text(kernel.run("%tunnel cleanup")) == "Nothing to clean up.\n"


def test_widget_card_without_a_frontend_follows_the_tunnel(net: Sandbox) -> None:
    """The card's states, drawn in this process (no kernel): connecting, ready, closed."""
    from jupyter_tunnel.manager import TunnelManager
    from jupyter_tunnel.spec import build_spec
    from jupyter_tunnel.widgets import TunnelCard

    manager = TunnelManager(ssh_config=str(net.ssh_config))
    tunnel = manager.prepare(build_spec("beast via unicorn"))
    card = TunnelCard(tunnel)
    seen: list[str] = []
    tunnel.on_event(lambda t, e: seen.append(card.badge.value))
    assert 'data-state="connecting"' in card.badge.value
    assert "⋯ <b>unicorn</b>" in card.hops.value and card.close_button.disabled is False
    manager.start(tunnel)
    assert 'data-state="ready"' in card.badge.value and tunnel.url
    assert tunnel.url.split("?")[0] in card.link.value
    assert card.progress.layout.display == "none"
    assert card.reconnect_button.disabled is False
    assert repr(card) == f"<tunnel beast: ready, unicorn -> beast, {tunnel.url.split('?')[0]}>"
    card.reconnect()  # the Reconnect button: same port and URL afterwards
    deadline = time.monotonic() + 30
    while not (tunnel.reconnects == 1 and tunnel.state.value == "ready"):
        assert time.monotonic() < deadline, tunnel.to_dict()
        time.sleep(0.1)
    card.refresh()
    assert 'data-state="ready"' in card.badge.value and "1 reconnect ·" in card.stats.value
    assert any('data-state="reconnecting"' in v for v in seen)
    assert tunnel.url and api_status(tunnel.url) == 200
    card.close_tunnel()
    assert 'data-state="closed"' in card.badge.value and card.close_button.disabled
    assert any('data-state="detecting"' in v for v in seen)
    card.close()
    assert tunnel.local_port is not None and port_is_free(tunnel.local_port)
