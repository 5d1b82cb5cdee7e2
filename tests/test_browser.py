"""The chat page in a real browser: a message typed in one page appears in another page
served by another instance. Headless Chromium from the distribution's packages."""

import asyncio
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from patterns import processes
from patterns.chat import instances

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)

missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
if missing and os.environ.get("REQUIRE_BROWSER") != "1":
    pytest.skip(
        f"{' and '.join(missing)} not installed (apt-get install chromium chromium-driver); "
        "set REQUIRE_BROWSER=1 to make this a failure",
        allow_module_level=True,
    )


def browser(profile: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def chat_in_two_pages(url_a: str, url_b: str, text: str) -> list[str]:
    """Open a page on each instance, type `text` in the first; what the second shows."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    profiles = [tempfile.mkdtemp(prefix="patterns-chromium-") for _ in range(2)]
    drivers = []
    try:
        for profile, url in zip(profiles, (url_a, url_b), strict=True):
            driver = browser(profile)
            drivers.append(driver)
            driver.get(url)
            WebDriverWait(driver, 20).until(
                expected_conditions.text_to_be_present_in_element((By.ID, "status"), "connected")
            )
        sender, receiver = drivers
        sender.find_element(By.ID, "text").send_keys(text + "\n")
        WebDriverWait(receiver, 20).until(
            expected_conditions.text_to_be_present_in_element((By.ID, "messages"), text)
        )
        return [li.text for li in receiver.find_elements(By.CSS_SELECTOR, "#messages li")]
    finally:
        for driver in drivers:
            driver.quit()
        for profile in profiles:
            shutil.rmtree(profile, ignore_errors=True)


async def test_a_message_typed_in_one_page_appears_in_a_page_of_another_instance() -> None:
    topic = f"test:browser:{uuid.uuid4().hex}"
    try:
        async with processes.children() as started:
            a, b = await instances.start(started, "redis", 2, topic)
            shown = await asyncio.to_thread(
                chat_in_two_pages, a.ready["url"], b.ready["url"], "hello from a browser ✓"
            )
    finally:
        await instances.clean(topic)
    assert shown == ["hello from a browser ✓"]
