"""jupyter_tunnel inside a real JupyterHub: two users on one machine, a browser elsewhere.

The hub (tests/hub_rig.py) runs jupyterhub with configurable-http-proxy, the dummy
authenticator and LocalProcessSpawner, so alice's and bob's Jupyter servers run as two real
local users.  The browser runs in its own network namespace and reaches only the hub's proxy.

- alice logs in, opens beast via unicorn in the Tunnels panel, installs beast's kernels
  from it and runs a cell on beast in a notebook of her own Lab;
- bob logs in and sees none of it: not in his panel, his launcher, his REST API, his
  command line; his REST calls to alice's tunnel get 403 or 404 and change nothing; his
  processes get nothing through her tunnel's port; his cleanup leaves her tunnel alone;
- stopping alice's server through the hub closes her tunnel and ends her remote kernel:
  nothing of hers is left here or on beast.
Screenshots: test-artifacts/hub-*.png.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from browser import CHROMIUM, CHROMIUM_ARGS, artifact
from conftest import need, port_is_free
from hub_rig import PROXY, Hub
from launched import end_launched, launched_pids
from test_panel import tid

from jupyter_tunnel import procinfo
from jupyter_tunnel.sandbox import Sandbox

pytestmark = pytest.mark.network

DISPLAY = "Python 3 (ipykernel) on beast"
PANEL_TAB = ".jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id='jupyter-tunnel-panel']"


@pytest.fixture(scope="module")
def hub(net: Sandbox) -> Iterator[Hub]:
    if os.geteuid() != 0 or not net.netns:
        need("a hub with real users needs root and network namespaces")
    if not PROXY.exists():
        need(f"configurable-http-proxy missing ({PROXY}): run .ci/setup")
    with Hub(net) as running:
        yield running


@pytest.fixture
def desk(hub: Hub) -> Iterator[Any]:
    """A headless chromium in the desk's namespace: it reaches the hub's proxy only.  One
    per test: Playwright's loop must be gone before an autouse asyncio fixture (pytest-jupyter's,
    once another module loaded it) closes the test's loop."""
    if not os.path.exists(CHROMIUM):
        need("chromium not installed (apt-get install -y chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(hub.desk_chromium()),
                                              headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.25)


def log_in(page: Any, hub: Hub, who: str) -> None:
    """Log in at the hub's login page; the hub starts the user's server and opens Lab."""
    page.goto(f"{hub.url}/hub/login")
    page.locator("#username_input").fill(hub.users[who].name)
    page.locator("#password_input").fill(hub.password)
    page.locator("#login_submit").click()
    page.wait_for_url(f"**/user/{hub.users[who].name}/lab**", timeout=120_000)
    # a fresh workspace: no notebook of an earlier visit restored over the launcher
    page.goto(f"{hub.url}/user/{hub.users[who].name}/lab?reset")
    page.locator(".jp-Launcher").first.wait_for(timeout=60_000)


def open_panel(page: Any) -> Any:
    page.locator(PANEL_TAB).click()
    panel = page.locator("#jupyter-tunnel-panel")
    panel.wait_for(state="visible")
    return panel


def user_api(hub: Hub, token_of: str, method: str, server_of: str, path: str,
             body: Any = None) -> tuple[int, Any]:
    """``method`` on ``/user/{server_of}/jupyter-tunnel/api/{path}`` with a hub token of
    ``token_of``, through the proxy."""
    return hub.request(method, f"user/{hub.users[server_of].name}/jupyter-tunnel/api/{path}",
                       hub.token_of(token_of), body)


def beast_kernels(net: Sandbox) -> list[str]:
    """The remote kernels' files on beast (four per kernel the nanny runs)."""
    folder = net.home("beast") / ".cache" / "jupyter_tunnel" / "kernels"
    return sorted(os.listdir(folder)) if folder.exists() else []


def test_alice_computes_on_beast_and_bob_sees_none_of_it(hub: Hub, desk: Any,
                                                         net: Sandbox) -> None:
    alice = hub.users["alice"]
    beast_ns = net.run_in("beast", ["readlink", "/proc/self/ns/net"], capture_output=True,
                          text=True).stdout.strip()
    alice_page = desk.new_page(viewport={"width": 1400, "height": 900})
    alice_page.set_default_timeout(60_000)
    bob_context = desk.new_context(viewport={"width": 1400, "height": 900})
    bob_page = bob_context.new_page()
    bob_page.set_default_timeout(60_000)
    step = "alice logs in"
    try:
        log_in(alice_page, hub, "alice")
        panel = open_panel(alice_page)

        step = "alice opens beast via unicorn"
        panel.locator(tid("jt-target")).fill("beast")
        panel.locator(tid("jt-via")).first.fill("unicorn")
        panel.locator(tid("jt-open")).click()
        row = panel.locator(f"{tid('jt-tunnel')}[data-name='beast'][data-state='ready']")
        row.wait_for(timeout=60_000)
        status, record = user_api(hub, "alice", "GET", "alice", "tunnels/beast")
        assert status == 200 and record["state"] == "ready", (status, record)
        port = record["local_port"]
        helper = record["resume"]["helper"]  # it holds her connections on beast
        assert procinfo.is_alive(helper["pid"], helper["started"])
        # the browser is elsewhere: the tunnel's own port is out of its reach
        reach = subprocess.run(["ip", "netns", "exec", hub.desk, "bash", "-c",
                                f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True)
        assert reach.returncode != 0
        assert row.locator(tid("jt-hub-note")).is_visible()
        assert row.locator("a").count() == 0

        step = "alice uses beast's kernels"
        use = row.locator(tid("jt-use-kernels"))
        use.click()
        status_line = row.locator(tid("jt-kernels-status"))
        alice_page.wait_for_function("el => el.textContent.startsWith('Installed ')",
                                     arg=status_line.element_handle(), timeout=90_000)
        card = alice_page.locator(".jp-LauncherCard[data-category='Notebook']",
                                  has_text=DISPLAY)
        card.first.wait_for(timeout=15_000)
        card.first.click()
        alice_page.locator(".jp-StatusBar-TextItem", has_text=f"{DISPLAY} | Idle").first \
            .wait_for(timeout=120_000)
        cell = alice_page.locator(".jp-Notebook .jp-Cell .cm-content").first
        cell.click()
        alice_page.keyboard.type("import os; print(os.readlink('/proc/self/ns/net'))")
        alice_page.keyboard.press("Shift+Enter")
        output = alice_page.locator(".jp-Notebook .jp-OutputArea-output").first
        output.wait_for(timeout=60_000)
        assert output.inner_text().strip() == beast_ns
        assert len([f for f in beast_kernels(net) if f.endswith('.state')]) == 1
        alice_page.screenshot(path=str(artifact("hub-alice-notebook-on-beast.png")))

        step = "the kernel's own tunnel asks before it is closed"
        kernel_row = panel.locator(f"{tid('jt-tunnel')}[data-name^='beast-kernel-']")
        kernel_row.wait_for()
        assert "carries the remote kernel beast-python3" in \
            kernel_row.locator(tid("jt-meta")).inner_text()
        kernel_row.locator(tid("jt-close")).click()
        dialog = alice_page.locator(".jp-Dialog")
        dialog.wait_for()
        assert "closing it cuts that kernel off from its notebook" in dialog.inner_text()
        dialog.get_by_role("button", name="Cancel").click()
        dialog.wait_for(state="detached")
        assert kernel_row.get_attribute("data-state") == "ready"

        step = "bob logs in and sees none of it"
        log_in(bob_page, hub, "bob")
        bob_panel = open_panel(bob_page)
        bob_panel.locator(tid("jt-empty")).wait_for(state="visible", timeout=30_000)
        assert bob_panel.locator(tid("jt-tunnel")).count() == 0
        assert bob_page.locator(".jp-LauncherCard", has_text=DISPLAY).count() == 0
        bob_page.screenshot(path=str(artifact("hub-bob-sees-nothing.png")))

        step = "bob's REST calls"
        assert user_api(hub, "bob", "GET", "bob", "tunnels") == (200, [])
        assert user_api(hub, "bob", "GET", "bob", "kernels")[1]["installed"] == []
        for method, path, body in [("GET", "tunnels/beast", None),
                                   ("DELETE", "tunnels/beast", None),
                                   ("POST", "tunnels/beast/answer", {"id": "x", "answer": "1"})]:
            status, answer = user_api(hub, "bob", method, "bob", path, body)
            assert status == 404, (method, path, status, answer)
            assert "beast" in answer["message"]
        for method, path, body in [("GET", "tunnels", None), ("GET", "tunnels/beast", None),
                                   ("DELETE", "tunnels/beast", None),
                                   ("POST", "tunnels/beast/answer", {"id": "x", "answer": "1"}),
                                   ("GET", "kernels", None),
                                   ("DELETE", "kernels/beast-python3", None)]:
            status, answer = user_api(hub, "bob", method, "alice", path, body)
            assert status == 403, (method, path, status, answer)

        step = "bob's command line and processes"
        listed = hub.as_user("bob", ["jupyter", "tunnel", "list", "--json"])
        assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed
        closed = hub.as_user("bob", ["jupyter", "tunnel", "close", "beast"])
        assert closed.returncode != 0 and "no tunnel named 'beast'" in closed.stderr, closed
        answered = hub.as_user("bob", ["jupyter", "tunnel", "answer", "beast"], input="1\n")
        assert answered.returncode != 0 and "no tunnel named 'beast'" in answered.stderr, \
            answered
        cleaned = hub.as_user("bob", ["jupyter", "tunnel", "cleanup", "--json"])
        assert cleaned.returncode == 0, cleaned
        assert not any(json.loads(cleaned.stdout).get(key) for key in ("removed", "ended")), \
            cleaned.stdout
        peek = hub.as_user("bob", ["ls", str(alice.home / ".local")])
        assert peek.returncode != 0 and "Permission denied" in peek.stderr, peek
        specs = hub.as_user("bob", ["jupyter", "kernelspec", "list", "--json"])
        assert "beast-python3" not in json.loads(specs.stdout)["kernelspecs"]
        # bob's process gets no answer through alice's port; alice's own does
        get = ('exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 9; printf "GET /api/status '
               'HTTP/1.0\\r\\n\\r\\n" >&3; timeout 10 cat <&3')
        theirs = hub.as_user("bob", ["bash", "-c", get, "get", str(port)])
        assert theirs.returncode != 9 and theirs.stdout == "", theirs
        hers = hub.as_user("alice", ["bash", "-c", get, "get", str(port)])
        assert hers.stdout.startswith("HTTP/1.1 403"), hers  # beast's Jupyter: no token
        status, record = user_api(hub, "alice", "GET", "alice", "tunnels/beast")
        assert status == 200 and record["state"] == "ready", "bob changed alice's tunnel"
        assert len([f for f in beast_kernels(net) if f.endswith('.state')]) == 1

        step = "the hub stops alice's server"
        alice_page.screenshot(path=str(artifact("hub-alice-before-stop.png")))
        hub.stop_server("alice")
        wait_until(lambda: hub.processes_of("alice") == [], 30,
                   f"alice's processes left: {hub.processes_of('alice')}")
        # the spawner's SIGINT stopped her server cleanly (jupyter_server's own shutdown)
        assert "SIGINT under JupyterHub: stopping the server" in hub.log_tail(10**7)
        assert port_is_free(port)
        wait_until(lambda: beast_kernels(net) == [], 30,
                   f"alice's kernel left on beast: {beast_kernels(net)}")
        wait_until(lambda: not procinfo.is_alive(helper["pid"], helper["started"]), 30,
                   "alice's resume helper left on beast")
        assert [p for p in os.listdir("/tmp") if p.startswith(f"jupyter_tunnel-{alice.uid}-")] \
            == []
        assert hub.processes_of("bob"), "bob's server went with alice's"
    except Exception:
        with contextlib.suppress(Exception):
            alice_page.screenshot(path=str(artifact("hub-failure-alice.png")))
            bob_page.screenshot(path=str(artifact("hub-failure-bob.png")))
        artifact("hub.log").write_text(hub.log_tail(10**7))
        print(f"failed at: {step} (the hub's whole log: test-artifacts/hub.log)\n"
              f"{hub.log_tail()}")
        raise
    finally:
        alice_page.close()
        bob_context.close()
        with contextlib.suppress(Exception):
            hub.stop_server("bob")


def test_alices_launched_lab_is_served_through_her_server(hub: Hub, desk: Any,
                                                           net: Sandbox) -> None:
    alice = hub.users["alice"]
    served = f"/user/{alice.name}/jupyter-tunnel/lab/beast/"
    beast_ns = net.run_in("beast", ["readlink", "/proc/self/ns/net"], capture_output=True,
                          text=True).stdout.strip()
    notebooks = set(net.home("beast").glob("Untitled*.ipynb"))
    page = desk.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(60_000)
    bob_context = desk.new_context()
    remote: Any = None
    step = "alice opens beast via unicorn with 'Start JupyterLab there'"
    try:
        log_in(page, hub, "alice")
        panel = open_panel(page)
        panel.locator(tid("jt-target")).fill("beast")
        panel.locator(tid("jt-via")).first.fill("unicorn")
        panel.locator(".jp-TunnelPanel-options summary").click()
        panel.locator(tid("jt-launch")).check()
        panel.locator(tid("jt-open")).click()
        row = panel.locator(f"{tid('jt-tunnel')}[data-name='beast'][data-state='ready']")
        row.wait_for(timeout=120_000)
        link = row.locator(tid("jt-link"))
        assert link.get_attribute("href") == served + "lab"
        assert row.locator(tid("jt-hub-note")).is_hidden()
        assert len(launched_pids(net, served)) == 1  # started for her, beside beast's own

        step = "the served JupyterLab, through the hub's proxy"
        with page.context.expect_page() as new_tab:
            link.click()
        remote = new_tab.value
        remote.set_default_timeout(60_000)
        remote.wait_for_selector("#jp-main-dock-panel")
        assert remote.url.startswith(f"{hub.url}{served}lab")
        config = json.loads(remote.locator("#jupyter-config-data").text_content())
        assert config["baseUrl"] == served and config["token"] == ""
        remote.locator(".jp-LauncherCard[data-category='Notebook']").first.click()
        # connected: the status bar says Idle only once the kernel answered over the
        # websocket (a cell run before that goes nowhere, as in any JupyterLab)
        remote.locator(".jp-StatusBar-TextItem", has_text="Python 3 (ipykernel) | Idle") \
            .first.wait_for(timeout=90_000)
        remote.locator(".jp-Notebook .jp-Cell .cm-content").first.click()
        remote.keyboard.type("import os; print(os.readlink('/proc/self/ns/net'))")
        remote.keyboard.press("Shift+Enter")
        output = remote.locator(".jp-Notebook .jp-OutputArea-output").first
        output.wait_for(timeout=60_000)
        assert output.inner_text().strip() == beast_ns
        remote.screenshot(path=str(artifact("hub-served-lab.png")))

        step = "bob cannot reach it"
        bob_page = bob_context.new_page()
        log_in(bob_page, hub, "bob")
        answer = bob_page.goto(f"{hub.url}{served}lab")
        assert answer is not None and answer.status == 403, answer and answer.status
        assert bob_page.locator("#jp-main-dock-panel").count() == 0
        status, _ = hub.request("GET", f"{served.lstrip('/')}api/status", hub.token_of("bob"))
        assert status == 403

        step = "the hub stops alice's server"
        remote.close()
        hub.stop_server("alice")
        wait_until(lambda: hub.processes_of("alice") == [], 30,
                   f"alice's processes left: {hub.processes_of('alice')}")
        # what she started on beast keeps running for next time, as with --launch
        assert len(launched_pids(net, served)) == 1
    except Exception:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(artifact("hub-served-failure.png")))
            if remote is not None and not remote.is_closed():
                remote.screenshot(path=str(artifact("hub-served-remote-failure.png")))
        artifact("hub.log").write_text(hub.log_tail(10**7))
        print(f"failed at: {step} (the hub's whole log: test-artifacts/hub.log)")
        raise
    finally:
        page.close()
        bob_context.close()
        assert end_launched(net, served, 20), "the launched Lab did not end"
        for notebook in set(net.home("beast").glob("Untitled*.ipynb")) - notebooks:
            notebook.unlink(missing_ok=True)
        with contextlib.suppress(Exception):
            hub.stop_server("bob")
