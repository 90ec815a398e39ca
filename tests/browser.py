"""Headless Chromium (Debian's chromium + chromium-driver) driven by Selenium, for the UI tests.

Tests call `skip_reason()` first and skip with its text when it is not None. Screenshots go to the
test's temporary folder, or to $CIFAR_PIPELINE_KEEP_SCREENSHOTS when set (to look at them later).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
KEEP_ENV = "CIFAR_PIPELINE_KEEP_SCREENSHOTS"


def skip_reason() -> str | None:
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[test]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not path.exists():
            return f"{path} not found (Debian: apt-get install {package}; `make test` does it as root)"
    return None


def start_chromium():
    # Selenium Manager would otherwise try to download a driver on first use: no network here.
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # --no-sandbox: the tests may run as root, where Chromium's sandbox refuses to start.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,2400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(120)
    return driver


def screenshot_dir(default: Path) -> Path:
    folder = Path(os.environ.get(KEEP_ENV) or default)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
