"""The storybook page in a real headless browser (Debian's chromium through chromedriver; nothing downloads)."""

from __future__ import annotations

import shutil

import pytest

pytestmark = pytest.mark.stack

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser(monkeypatch):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("the storybook page test needs Debian's chromium and chromium-driver "
                    "(apt-get install chromium chromium-driver; `make test` does it when run as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    monkeypatch.setenv("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=DriverService(executable_path=CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def test_a_sentence_typed_in_the_page_becomes_a_story_of_pictures_in_order(service, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{service.url}/")
    browser.find_element(By.ID, "text").send_keys("A fox finds a red key.")
    segments = browser.find_element(By.ID, "segments")
    segments.clear()
    segments.send_keys("3")
    browser.find_element(By.ID, "token").send_keys(service.token)
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 120).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "#story[data-outcome]")))
    rows = browser.find_elements(By.CSS_SELECTOR, "#story .segment")
    assert [row.get_attribute("data-index") for row in rows] == ["0", "1", "2"]
    for row in rows:
        image = row.find_element(By.CSS_SELECTOR, ".picture img")
        assert image.get_attribute("src").startswith("data:image/png;base64,")
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 0
        assert row.find_element(By.CSS_SELECTOR, ".words").text.strip()
    assert browser.find_element(By.ID, "story").get_attribute("data-outcome") == "completed"
    assert browser.find_element(By.ID, "status").text.startswith("done: completed")
    screenshot = tmp_path / "storybook.png"
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 0


def test_the_page_reports_a_refused_request(service, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"{service.url}/")
    browser.find_element(By.ID, "text").send_keys("A fox.")
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 60).until(lambda b: "401" in b.find_element(By.ID, "status").text)
    assert "Authorization" in browser.find_element(By.ID, "status").text
    assert not browser.find_elements(By.CSS_SELECTOR, "#story .segment")
