"""Debian's chromium, headless, for tests that look at the HTML mlpipe writes (``resources.browser``).

Each call starts a fresh browser with its own profile directory and waits for it to exit.
CI installs chromium (``.ci/run``); a developer machine without it skips these tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: .ci/run installs it (apt-get install -y chromium) before the tests")
    pytest.skip("chromium is not installed (apt-get install -y chromium); CI installs it in .ci/run")


def _run(page: Path, *extra: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory(prefix="mlpipe-chromium-") as profile:
        return subprocess.run(
            [chromium(), *FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )


def dump_dom(page: Path) -> str:
    """The page's DOM after chromium loaded and laid it out."""
    return _run(page, "--dump-dom").stdout


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 2000) -> Path:
    """A PNG of the page as chromium renders it."""
    _run(page, f"--window-size={width},{height}", f"--screenshot={png.resolve()}")
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"chromium wrote no PNG to {png}"
    return png
