"""Browser tests: Debian's chromium driven by Playwright, against a JupyterLab subprocess.

Use it from a test module with ``pytest_plugins = ["browser"]``; that gives the fixtures

- ``browser``: a headless chromium (skips, or fails in CI, when chromium or Playwright is
  missing), closed after the test;
- ``lab_factory``: ``lab_factory(config={...})`` starts ``jupyter lab`` of this venv on
  127.0.0.1 with a token, its own JUPYTER_CONFIG_DIR (the given server config, the news
  toast off) and returns a :class:`Lab`; every lab is stopped after the test.

Screenshots go to ``test-artifacts/`` (see :func:`artifact`).

(PYTEST_DONT_REWRITE: test modules import helpers from here before pytest loads it as a
plugin; it has no asserts to rewrite.)
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, need

CHROMIUM = "/usr/bin/chromium"
#: without the background-networking flags chromium keeps calling hosts this network refuses
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def artifact(name: str) -> Path:
    """A path in test-artifacts/ (its folder made) for a screenshot or a log."""
    path = ARTIFACTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def answers(url: str, token: str, timeout: float = 2) -> bool:
    """Whether a Jupyter server at ``url`` (ending in "/") answers api/status with the token."""
    request = urllib.request.Request(f"{url}api/status",
                                     headers={"Authorization": f"token {token}"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status) == 200
    except OSError:
        return False


@dataclass
class Lab:
    """A running JupyterLab."""

    url: str  # base URL, ending in "/"
    token: str
    root: Path  # its root_dir (notebooks go here)
    log: Path
    proc: subprocess.Popen[bytes]

    def page_url(self, path: str = "lab") -> str:
        """A page's URL with the token, as `jupyter lab` prints it."""
        return f"{self.url}{path}?token={self.token}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        """Stop it as Ctrl-C would (kernels and server extensions shut down)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_lab(folder: Path, config: dict[str, Any] | None = None, *,
              env: dict[str, str] | None = None, args: list[str] | None = None,
              timeout: float = 90) -> Lab:
    """Start ``jupyter lab`` in ``folder`` (config dir, root dir and log made inside it)."""
    folder.mkdir(parents=True, exist_ok=True)
    config_dir = folder / "jupyter-config"
    (config_dir / "labconfig").mkdir(parents=True, exist_ok=True)
    (config_dir / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    (config_dir / "jupyter_server_config.json").write_text(json.dumps(config or {}, indent=1))
    root = folder / "lab-root"
    root.mkdir(exist_ok=True)
    port, token = free_port(), secrets.token_hex(16)
    bindir = str(Path(sys.executable).parent)
    full_env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config_dir),
                "PATH": f"{bindir}:{os.environ.get('PATH', '')}", **(env or {})}
    argv = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", *(args or [])]
    if os.geteuid() == 0:
        argv.append("--allow-root")
    log = folder / "lab.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=full_env, cwd=root, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    lab = Lab(f"http://127.0.0.1:{port}/", token, root, log, proc)
    deadline = time.monotonic() + timeout
    while not answers(lab.url, token):
        if proc.poll() is not None or time.monotonic() > deadline:
            lab.stop()
            pytest.fail(f"JupyterLab did not start:\n{lab.log_tail()}")
        time.sleep(0.2)
    return lab


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    """Start JupyterLabs with ``lab_factory(config=..., env=..., args=...)``."""
    labs: list[Lab] = []

    def make(config: dict[str, Any] | None = None, **kwargs: Any) -> Lab:
        lab = start_lab(tmp_path / f"lab{len(labs)}", config, **kwargs)
        labs.append(lab)
        return lab

    try:
        yield make
    finally:
        for lab in labs:
            lab.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless chromium (a Playwright ``Browser``)."""
    if not os.path.exists(CHROMIUM):
        need("chromium not installed (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need("playwright not installed (pip install playwright)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                              args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
