"""The grower's page in headless Chromium (Debian's /usr/bin/chromium through Playwright).

Readings from the live feed are shown, a hot reading is highlighted with its warning in Korean and
English, and a question's answer streams in piece by piece; the layout fits a phone screen.
Chromium must be installed (apt-get install chromium): without it this test fails, not skips.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from farmslm.domain import rules
from test_serve import FakeEngine, serving  # tests/ is on sys.path (rootdir conftest)

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright  # test extras; the browser is Debian's, never downloaded

    assert os.path.exists(CHROMIUM), "chromium is not installed (apt-get install chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_page_shows_readings_warnings_and_streams_the_answer(browser):
    fake = FakeEngine(delay=0.3, words=("Open", "the", "vents", "now."))
    with serving(lambda: fake) as srv:
        srv.app.state.feed.ingest("farm/gh1/sensors", json.dumps({"temp_c": 36.2, "co2_ppm": 600,
                                                                   "period": "day"}).encode())
        page = browser.new_page(locale="ko-KR", viewport={"width": 390, "height": 844})
        page.goto(srv.url + "/?zone=gh1")

        hot = page.locator('tr[data-key="temp_c"]')
        hot.wait_for()
        assert "36.2" in hot.inner_text() and "abnormal" in hot.get_attribute("class")
        assert "abnormal" not in (page.locator('tr[data-key="co2_ppm"]').get_attribute("class") or "")
        warning_ko = rules.message("HIGH_TEMP", "ko")
        page.locator("#warnings li", has_text=warning_ko).wait_for()

        page.click("#lang")  # ko -> en
        page.locator("#warnings li", has_text=rules.message("HIGH_TEMP", "en")).wait_for()
        assert page.locator("h1").inner_text() == "Tomato greenhouse assistant"

        page.fill("#question", "Is it too hot?")
        page.click("#ask-button")
        seen: list[str] = []
        end = time.monotonic() + 15
        while time.monotonic() < end:
            text = page.locator("#answer").inner_text()
            if text and (not seen or seen[-1] != text):
                seen.append(text)
            if text == "Open the vents now.":
                break
            time.sleep(0.05)
        assert seen[-1] == "Open the vents now." and len(seen) >= 3, seen  # it arrived in pieces
        assert fake.calls[-1][1]["temp_c"] == 36.2  # the live readings were used
        assert page.locator("#answer-warnings", has_text=rules.message("HIGH_TEMP", "en")).count() == 1
        page.locator("#answer-meta", has_text="feed").wait_for()
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # fits a phone
        page.close()
