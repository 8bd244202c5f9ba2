"""Fixtures for the browser tests: Debian's Chromium driven by Playwright, a real server.

Chromium comes from apt (``make system-deps``); Playwright's own browser download is not
used. Each page records, from the moment it loads, every state pill the studio adds to the
document and every value the Run panel's step counter shows, so a test can check the
sequence a user saw even when a state lasted a few milliseconds.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from control_harness import Server, prepare_root, running_server, server_env
from playwright.sync_api import expect

CHROMIUM = os.environ.get("TUNERY_CHROMIUM", "/usr/bin/chromium")
# What a user sees should appear within seconds; a loaded CI machine gets some slack.
expect.set_options(timeout=15_000)

# Runs in the page before the studio's own scripts.
RECORDER = """
window.__seen = { pills: [], labels: [], steps: [] };
new MutationObserver((mutations) => {
  for (const mutation of mutations) {
    for (const node of mutation.addedNodes) {
      if (!(node instanceof Element)) continue;
      const pills = node.matches(".pill") ? [node] : [...node.querySelectorAll(".pill")];
      for (const pill of pills) {
        const row = pill.closest("[data-run-id]");
        window.__seen.pills.push([row ? row.dataset.runId : null, pill.dataset.status]);
        window.__seen.labels.push([row ? row.dataset.runId : null, pill.textContent]);
      }
    }
    const stat = mutation.target.closest && mutation.target.closest('[data-stat="step"]');
    if (stat) window.__seen.steps.push(stat.textContent);
  }
}).observe(document, { childList: true, subtree: true, characterData: true });
"""


@pytest.fixture(scope="session")
def chromium() -> Iterator[object]:
    if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
        pytest.skip(f"no Chromium at {CHROMIUM}: run `make system-deps` (apt install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
            args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"],
        )
        yield browser
        browser.close()


@pytest.fixture
def start_studio(tmp_path: Path, demo_model_dir: Path) -> Iterator[Callable[..., Server]]:
    """``start_studio(**settings)``: a fresh ``tunery serve`` (one CPU node at 1 credit per
    minute, 100 credits granted); settings override its ``tunery.yaml``."""
    with contextlib.ExitStack() as stack:

        def start(**settings: object) -> Server:
            root = prepare_root(tmp_path / "data", demo_model_dir, **settings)
            return stack.enter_context(running_server(root, server_env(root)))

        yield start


@pytest.fixture
def studio_server(start_studio: Callable[..., Server]) -> Server:
    return start_studio()


@pytest.fixture
def open_studio(chromium: object) -> Iterator[Callable[..., object]]:
    """``open_studio(server, token=None, width=1280, height=900)``: a signed-in page."""
    contexts = []

    def open_page(
        server: Server, token: str | None = None, *, width: int = 1280, height: int = 900
    ) -> object:
        context = chromium.new_context(  # type: ignore[attr-defined]
            viewport={"width": width, "height": height}, accept_downloads=True
        )
        contexts.append(context)
        context.add_init_script(RECORDER)
        page = context.new_page()
        page.set_default_timeout(30_000)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.errors = errors  # type: ignore[attr-defined]
        page.goto(f"{server.url}/#token={token or server.token}")
        return page

    yield open_page
    for context in contexts:
        with contextlib.suppress(Exception):
            context.close()
