"""The playground page at / in a real headless Chromium (Debian's chromium + chromium-driver via selenium)."""

from __future__ import annotations

import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from common import endpoints

from .conftest import WAIT_S

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=900,900",
)


@pytest.fixture
def browser(tmp_path):
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if shutil.which(path) is None]
    assert not missing, f"{', '.join(missing)} missing: install Debian's chromium and chromium-driver (.ci/run does)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_the_playground_generates_and_shows_an_image_of_the_served_shape(
    start_server, tiny_generator, browser, tmp_path
):
    server = start_server(lambda: tiny_generator)
    assert server.wait_until_settled().status_code == 200
    browser.get(server.url + endpoints.PLAYGROUND)
    wait = WebDriverWait(browser, WAIT_S)
    wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "readiness"), "ready"))
    assert browser.find_element(By.ID, "shape").text == f"{tiny_generator.shape} (HxW)"

    steps = browser.find_element(By.ID, "steps")
    steps.clear()
    steps.send_keys("3")
    browser.find_element(By.ID, "seed").send_keys("5")
    browser.find_element(By.ID, "generate").click()
    wait.until(expected_conditions.visibility_of_element_located((By.ID, "image")))

    image = browser.find_element(By.ID, "image")
    natural = browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)
    assert natural == [tiny_generator.shape.width, tiny_generator.shape.height]
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    timing = browser.find_element(By.ID, "timing").text
    assert timing.startswith("seed 5 · ") and "s generating" in timing
    assert browser.find_element(By.ID, "status").text == "done"
    screenshot = tmp_path / "playground.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 0
    print(f"screenshot: {screenshot}")


def test_the_playground_shows_the_server_s_error_message(start_server, tiny_generator, browser):
    server = start_server(lambda: tiny_generator)
    assert server.wait_until_settled().status_code == 200
    browser.get(server.url + endpoints.PLAYGROUND)
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys("   ")
    browser.find_element(By.ID, "generate").click()
    WebDriverWait(browser, WAIT_S).until(
        expected_conditions.text_to_be_present_in_element((By.ID, "status"), "must contain non-whitespace text")
    )
    assert browser.find_element(By.ID, "status").get_attribute("class") == "error"


def test_the_docs_page_renders_every_operation_offline(start_server, tiny_generator, browser):
    server = start_server(lambda: tiny_generator)
    browser.get(server.url + endpoints.DOCS)
    WebDriverWait(browser, WAIT_S).until(
        expected_conditions.presence_of_element_located((By.CSS_SELECTOR, "section.operation"))
    )
    operations = {
        (heading.find_element(By.CLASS_NAME, "method").text.lower(), heading.find_element(By.TAG_NAME, "code").text)
        for heading in browser.find_elements(By.CSS_SELECTOR, "section.operation h2")
        if heading.find_elements(By.TAG_NAME, "code")
    }
    schema = server.client.get(endpoints.OPENAPI).json()
    assert operations == {(method, path) for path, methods in schema["paths"].items() for method in methods}
    # Every resource the page loaded came from this server.
    loaded = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(server.url) for url in loaded), loaded
