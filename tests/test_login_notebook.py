"""Logins that ask, in a notebook: `%tunnel` and `open_tunnel` in a real kernel put a hop's
question in an input box under the running cell (a password box for a secret, the hop
named), as JupyterLab shows a kernel's input request; the answer opens the tunnel, a wrong
one fails the cell naming the hop."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager, start_new_kernel
from test_login_sshtunnel import _registry_text
from test_magics import kernel_env
from test_open import api_status

from jupyter_tunnel.sandbox import Sandbox

pytestmark = pytest.mark.network



@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[BlockingKernelClient]:
    km: KernelManager
    km, kc = start_new_kernel(kernel_name="python3", env=kernel_env(tmp_path))
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


class Cell:
    """One cell run as JupyterLab runs it (input allowed); what it printed and asked."""

    def __init__(self, kc: BlockingKernelClient, source: str, answer: str | None = None
                 ) -> None:
        self.asked: list[dict[str, Any]] = []
        self.out: list[str] = []
        self.widget_texts: list[str] = []  # the values the kernel's widgets were given

        def stdin_hook(msg: dict[str, Any]) -> None:
            self.asked.append(msg["content"])
            kc.input(answer if answer is not None else "")

        def output_hook(msg: dict[str, Any]) -> None:
            content = msg["content"]
            if msg["msg_type"] == "stream":
                self.out.append(content["text"])
            elif msg["msg_type"] == "error":
                self.out.append(f"{content['ename']}: {content['evalue']}")
            elif msg["msg_type"] in ("comm_open", "comm_msg"):
                value = ((content.get("data") or {}).get("state") or {}).get("value")
                if isinstance(value, str):
                    self.widget_texts.append(value)

        reply = kc.execute_interactive(source, allow_stdin=True, stdin_hook=stdin_hook,
                                       output_hook=output_hook, timeout=120)
        self.status = reply["content"]["status"]
        self.text = "".join(self.out)


def _setup(kc: BlockingKernelClient, net: Sandbox, backend: str) -> None:
    cell = Cell(kc, "%load_ext jupyter_tunnel\n"
                    f"%config TunnelManager.ssh_config = {str(net.ssh_config)!r}\n"
                    f"%config TunnelManager.backend = {backend!r}")
    assert cell.status == "ok", cell.text


@pytest.mark.parametrize("backend", ["sshtunnel", "openssh"])
def test_tunnel_magic_asks_in_a_password_box_under_the_cell(
        kernel: BlockingKernelClient, totp_net: Sandbox, runtime_dir: Path,
        backend: str) -> None:
    _setup(kernel, totp_net, backend)
    code = totp_net.next_code()
    cell = Cell(kernel, "t = %tunnel beast via unicorn\n"
                        "import json; print(json.dumps([t.state.value, t.url]))", code)
    assert cell.status == "ok", cell.text
    assert len(cell.asked) == 1, cell.asked
    assert cell.asked[0]["password"] is True
    prompt = cell.asked[0]["prompt"]
    assert prompt.startswith("unicorn (") and "asks: One-time password (OATH)" in prompt, prompt
    # the card says who asks what, and where to answer
    assert any("unicorn (" in v and "asks: One-time password (OATH)" in v
               and "answer in the box under the cell" in v for v in cell.widget_texts), \
        cell.widget_texts
    state, url = json.loads(cell.text.strip().splitlines()[-1])
    assert state == "ready" and api_status(url) == 200
    assert code not in cell.text and code not in _registry_text(runtime_dir)
    closed = Cell(kernel, "%tunnel close beast")
    assert closed.status == "ok", closed.text


def test_open_tunnel_in_a_cell_asks_by_default_and_a_wrong_code_fails_the_cell(
        kernel: BlockingKernelClient, totp_net: Sandbox, runtime_dir: Path) -> None:
    right = totp_net.next_code()
    wrong = "000000" if right != "000000" else "111111"
    cell = Cell(kernel, "from jupyter_tunnel import open_tunnel\n"
                        "from jupyter_tunnel.manager import TunnelManager\n"
                        f"m = TunnelManager(ssh_config={str(totp_net.ssh_config)!r}, "
                        "backend='sshtunnel')\n"
                        "open_tunnel('beast', via='unicorn', manager=m)", wrong)
    assert cell.status == "error"
    assert len(cell.asked) == 1 and cell.asked[0]["password"] is True, cell.asked
    assert "AnswerRefused" in cell.text and "unicorn" in cell.text, cell.text
    assert "refused" in cell.text, cell.text
    assert wrong not in _registry_text(runtime_dir)


def test_a_reconnect_while_the_kernel_is_idle_waits_for_jupyter_tunnel_answer(
        kernel: BlockingKernelClient, totp_net: Sandbox, runtime_dir: Path) -> None:
    _setup(kernel, totp_net, "sshtunnel")
    opened = Cell(kernel, "t = %tunnel beast via unicorn", totp_net.next_code())
    assert opened.status == "ok", opened.text
    # a reconnect that starts in the background: its question comes when no cell runs
    started = Cell(kernel, "import threading\n"
                           "threading.Thread(target=t.reconnect, daemon=True).start()")
    assert started.status == "ok" and started.asked == [], started.text
    cli = CLI(totp_net.ssh_config)
    deadline = time.monotonic() + 60
    while not json.loads(cli.run("status", "beast", "--json").stdout).get("prompt"):
        assert time.monotonic() < deadline, "no question shown"
        time.sleep(0.2)
    code = totp_net.next_code()
    answered = subprocess.run(cli.argv("answer", "beast"), input=code + "\n",
                              capture_output=True, text=True, timeout=60)
    assert answered.returncode == 0, answered.stderr
    back = Cell(kernel, "import time\n"
                        "while t.state.value != 'ready' or t.reconnects < 1: time.sleep(0.1)\n"
                        "print(t.reconnects, t.url)")
    assert back.status == "ok", back.text
    reconnects, url = back.text.split()
    assert reconnects == "1" and api_status(url) == 200
    assert code not in _registry_text(runtime_dir)
    Cell(kernel, "%tunnel close beast")
