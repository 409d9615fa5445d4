"""Headless Chromium for the operator page's tests, from the machine's own packages.

Debian's `chromium` and `chromium-driver` (`apt-get install chromium chromium-driver`; `python3
tasks.py test` installs them when missing) at /usr/bin/chromium and /usr/bin/chromedriver, or
wherever NEXUS_CHROMIUM and NEXUS_CHROMEDRIVER point. Selenium is told where both are and to stay
offline, so Selenium Manager never downloads a browser or a driver. A missing browser fails the
test that needs it, loudly: these tests are never skipped.

Screenshots go to `tests/artifacts/` (git-ignored), or to NEXUS_TEST_ARTIFACTS.
"""

from __future__ import annotations

import base64
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CHROMIUM = "/usr/bin/chromium"
DEFAULT_CHROMEDRIVER = "/usr/bin/chromedriver"
PAGE_LOAD_TIMEOUT_S = 30
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


def browser_paths() -> tuple[Path, Path]:
    """(chromium, chromedriver); raises RuntimeError saying how to install them when missing."""
    chromium = Path(os.environ.get("NEXUS_CHROMIUM") or DEFAULT_CHROMIUM)
    driver = Path(os.environ.get("NEXUS_CHROMEDRIVER") or DEFAULT_CHROMEDRIVER)
    missing = [str(path) for path in (chromium, driver) if not (path.is_file() and os.access(path, os.X_OK))]
    if missing:
        raise RuntimeError(
            f"{' and '.join(missing)} not found: install Debian's chromium and chromium-driver "
            "(apt-get install -y chromium chromium-driver; python3 tasks.py test does it), or set "
            "NEXUS_CHROMIUM and NEXUS_CHROMEDRIVER."
        )
    return chromium, driver


def artifacts_dir() -> Path:
    """Where the tests keep their screenshots: NEXUS_TEST_ARTIFACTS, else tests/artifacts/."""
    path = Path(os.environ.get("NEXUS_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def headless_chromium(width: int = 1440, height: int = 1000) -> Iterator[Any]:
    """A Selenium WebDriver on a fresh profile, quit (and its profile removed) afterwards."""
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not fetch anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = browser_paths()
    profile = Path(tempfile.mkdtemp(prefix="nexus-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium)
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(driver_path)), options=options)
    try:
        driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def full_page_screenshot(driver: Any, path: Path) -> Path:
    """The whole page, not only the window (Chromium's DevTools capture beyond the viewport)."""
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
