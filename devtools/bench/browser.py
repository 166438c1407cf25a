"""Headless Chromium for the web UI's browser tests, screenshots and benchmarks.

Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs it) driven by
Playwright for Python: Playwright's own browser download is not used (and not reachable
from here), the browser is the system's, named by ``executable_path``. ``launch`` fails
with a clear message when it is missing, never silently.
"""
from __future__ import annotations

import os
import shutil
from contextlib import contextmanager

CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage"]


class BrowserMissing(RuntimeError):
    pass


def chromium_path() -> str:
    """The Chromium to drive: $LABELMESH_CHROMIUM, else Debian's. BrowserMissing says how to get one."""
    want = os.environ.get("LABELMESH_CHROMIUM")
    for p in ([want] if want else []) + list(CANDIDATES) + [shutil.which("chromium") or ""]:
        if p and os.access(p, os.X_OK):
            return p
    raise BrowserMissing("no Chromium found (looked for $LABELMESH_CHROMIUM, " + ", ".join(CANDIDATES) + "): "
                         "install Debian's package with `apt-get install chromium` (.ci/run does it as root)")


@contextmanager
def launch(extra_args: list[str] | None = None):
    """A Playwright Browser on the system's Chromium (headless), closed on exit."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        raise BrowserMissing(f"Playwright for Python is not installed ({e}): pip install -e '.[test]'") from None
    path = chromium_path()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, headless=True, args=ARGS + list(extra_args or []))
        try:
            yield browser
        finally:
            browser.close()
