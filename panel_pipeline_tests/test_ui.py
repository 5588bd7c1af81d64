"""The Dagster UI in a real headless Chromium: the whole lineage shows, and the sensors run.

Uses Debian's chromium and chromium-driver (installed by `make test`). The screenshots are kept in
test-artifacts/ for a person to look at.
"""

from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
LINEAGE = ("surveygizmo_responses", "users", "samples", "mailings", "email_templates")
SENSORS = ("samples_queue_sensor", "mailings_queue_sensor", "transactions_queue_sensor", "member_changes_sensor")
pytestmark = [pytest.mark.slow, pytest.mark.stack]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1600,1000",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    yield driver
    driver.quit()


def page_text(driver) -> str:
    return driver.find_element(By.TAG_NAME, "body").text


def test_lineage_from_surveygizmo_to_mailings_is_shown(dagster_dev, browser):
    browser.get(f"{dagster_dev.url}/assets/mailings?view=lineage&lineageScope=upstream&lineageDepth=6")
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        WebDriverWait(browser, 60).until(lambda d: all(name in page_text(d) for name in LINEAGE))
    finally:
        browser.save_screenshot(str(ARTIFACTS / "ui-lineage.png"))
    edges = dagster_dev.graphql("{ assetNodes { assetKey { path } dependencyKeys { path } } }")["assetNodes"]
    upstream = {node["assetKey"]["path"][-1]: {d["path"][-1] for d in node["dependencyKeys"]} for node in edges}
    assert "surveygizmo_responses" in upstream["users"]
    assert "users" in upstream["samples"]
    assert "samples" in upstream["mailings"] and "email_templates" in upstream["mailings"]


def test_sensors_are_shown_running(dagster_dev, browser):
    browser.get(f"{dagster_dev.url}/automation")
    WebDriverWait(browser, 60).until(lambda d: all(name in page_text(d) for name in SENSORS))
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "ui-sensors.png"))
    data = dagster_dev.graphql(
        """{ sensorsOrError(
            repositorySelector: {repositoryLocationName: "panel_pipeline", repositoryName: "__repository__"}
        ) {
              ... on Sensors { results { name sensorState { status } } } } }"""
    )
    states = {s["name"]: s["sensorState"]["status"] for s in data["sensorsOrError"]["results"]}
    assert all(states[name] == "RUNNING" for name in SENSORS)
