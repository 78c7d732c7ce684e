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
from serving.previews import VAE_SCALE

from .conftest import WAIT_S, HeldAtStep

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


def open_playground(browser, server, shape) -> WebDriverWait:
    """The playground, once it shows what it read from the server (readiness, then the shape: the test
    waits for each thing it reads)."""
    browser.get(server.url + endpoints.PLAYGROUND)
    wait = WebDriverWait(browser, WAIT_S)
    wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "readiness"), "ready"))
    wait.until(expected_conditions.text_to_be_present_in_element((By.ID, "shape"), f"{shape} (HxW)"))
    return wait


def ask_for(browser, steps: int, seed: int) -> None:
    steps_input = browser.find_element(By.ID, "steps")
    steps_input.clear()
    steps_input.send_keys(str(steps))
    browser.find_element(By.ID, "seed").send_keys(str(seed))
    browser.find_element(By.ID, "generate").click()


def natural_size(browser, element_id: str) -> list[int]:
    image = browser.find_element(By.ID, element_id)
    return browser.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", image)


def screenshot(browser, path) -> None:
    assert browser.save_screenshot(str(path))
    assert path.stat().st_size > 0
    print(f"screenshot: {path}")


def test_the_playground_shows_progress_and_a_live_preview_then_the_image_of_the_served_shape(
    start_server, tiny_generator, gate, browser, tmp_path
):
    held = HeldAtStep(tiny_generator, 2, gate)
    server = start_server(lambda: held)
    assert server.wait_until_settled().status_code == 200
    wait = open_playground(browser, server, held.shape)
    gate.clear()
    ask_for(browser, steps=4, seed=5)

    # Held after step 2 of 4, previews after steps 1, 2 and 3: the bar at 2 of 4, the step 2 preview shown.
    wait.until(lambda _: browser.find_element(By.ID, "status").text == "step 2 of 4")
    progress = browser.find_element(By.ID, "progress")
    assert (progress.get_attribute("value"), progress.get_attribute("max")) == ("2", "4") and progress.is_displayed()
    wait.until(expected_conditions.visibility_of_element_located((By.ID, "preview")))
    assert natural_size(browser, "preview") == [held.shape.width // VAE_SCALE, held.shape.height // VAE_SCALE]
    shown_width = browser.execute_script("return arguments[0].clientWidth", browser.find_element(By.ID, "preview"))
    assert shown_width == held.shape.width, "shown at the image's size"
    assert "preview after step 2" in browser.find_element(By.ID, "preview-caption").text
    screenshot(browser, tmp_path / "playground-progress.png")

    gate.set()
    wait.until(expected_conditions.visibility_of_element_located((By.ID, "image")))
    assert natural_size(browser, "image") == [held.shape.width, held.shape.height]
    assert browser.find_element(By.ID, "image").get_attribute("src").startswith("data:image/png;base64,")
    assert browser.find_element(By.ID, "progress").get_attribute("value") == "4"
    assert not browser.find_element(By.ID, "preview").is_displayed()
    timing = browser.find_element(By.ID, "timing").text
    assert timing.startswith("seed 5 · ") and "s generating" in timing
    assert browser.find_element(By.ID, "status").text == "done"
    screenshot(browser, tmp_path / "playground.png")


def test_the_playground_shows_its_place_in_the_queue(start_server, gated_generator, browser, background, tmp_path):
    server = start_server(lambda: gated_generator, queue_size=1)
    assert server.wait_until_settled().status_code == 200
    wait = open_playground(browser, server, gated_generator.shape)
    gated_generator.gate.clear()
    running = background.submit(server.generate, seed=1)
    server.wait_for_metric("flux_generations_in_flight", 1)
    ask_for(browser, steps=2, seed=6)
    wait.until(lambda _: browser.find_element(By.ID, "queue").text == "queued: position 1, runs next")
    screenshot(browser, tmp_path / "playground-queued.png")

    gated_generator.gate.set()
    assert running.result().status_code == 200
    wait.until(lambda _: browser.find_element(By.ID, "status").text == "done")
    assert not browser.find_element(By.ID, "queue").is_displayed()
    assert natural_size(browser, "image") == [gated_generator.shape.width, gated_generator.shape.height]


@pytest.mark.parametrize("member", ["schnell", "adapted"])
def test_the_playground_shows_the_model_its_family_and_adapters_and_asks_with_the_family_s_defaults(
    member, published_family, start_server, browser
):
    options = getattr(published_family, member)
    announced = published_family.served(options)
    family = announced.family
    server = start_server(lambda: published_family.load(options), announced=announced)
    assert server.wait_until_settled().status_code == 200
    wait = open_playground(browser, server, options.shape)
    shown = {name: browser.find_element(By.ID, name).text for name in ("model", "family", "adapters")}
    adapters = ", ".join(f"{adapter.repo}@{adapter.revision} ×{adapter.scale:g}" for adapter in options.loras)
    assert shown == {"model": f"{options.model}@tiny-2", "family": family.name, "adapters": adapters or "none"}
    steps = browser.find_element(By.ID, "steps")
    assert (steps.get_attribute("value"), steps.get_attribute("max")) == (str(family.default_steps), str(family.max_steps))
    assert browser.find_element(By.ID, "guidance").is_displayed() == family.guidance
    if family.guidance:
        guidance = browser.find_element(By.ID, "guidance")
        assert (float(guidance.get_attribute("value")), float(guidance.get_attribute("max"))) == (
            family.default_guidance, family.max_guidance)

    # What the page asks with its defaults is what the server takes: the family's steps (and guidance).
    browser.find_element(By.ID, "generate").click()
    wait.until(lambda _: browser.find_element(By.ID, "status").text == "done")
    assert browser.find_element(By.ID, "progress").get_attribute("max") == str(family.default_steps)
    assert natural_size(browser, "image") == [options.shape.width, options.shape.height]


def test_the_playground_shows_the_server_s_error_message(start_server, tiny_generator, browser):
    server = start_server(lambda: tiny_generator)
    assert server.wait_until_settled().status_code == 200
    open_playground(browser, server, tiny_generator.shape)
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
