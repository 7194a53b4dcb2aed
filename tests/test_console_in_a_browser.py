"""The console in Debian's headless Chromium, against the gateway as `make run` starts it (sandboxes, a two-worker
gunicorn, the event worker): log in, find an order after a real PATCH and its webhooks, see its exchange and its
events, and redeliver a delivery that died while the subscriber refused, once it is back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from selenium.webdriver.common.by import By

from tests.browser import (
    assert_not_blank,
    chromium_session,
    page_text,
    save_screenshot,
    wait_for_element,
    wait_for_text,
    wait_for_title,
)
from tests.processes import (
    WEBHOOKS_TO_THE_GATEWAY,
    running_stack,
    write_sandbox_config_copy,
)

DEMO_KEY = "demo-caller-key-0000"
API = {"Authorization": f"Bearer {DEMO_KEY}"}


@pytest.fixture
def deployment(tmp_path):
    config = Path(write_sandbox_config_copy(tmp_path))
    # deliveries die quickly: two attempts, half a second apart at most
    config.write_text(config.read_text()
                      .replace("max_attempts = 10 ", "max_attempts = 2 ")
                      .replace("backoff_base_seconds = 1.0 ", "backoff_base_seconds = 0.2 ")
                      .replace("backoff_max_seconds = 600.0", "backoff_max_seconds = 0.5"))
    webhooks = {**WEBHOOKS_TO_THE_GATEWAY, "SANDBOX_ONGOING_WEBHOOK_RETRY_DELAYS": "[0.2, 0.5, 1, 2, 4]"}
    with running_stack(str(config), tmp_path, webhooks, logs=True) as urls:
        yield urls


def _wait_until(check, what: str, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"waited {seconds} s for {what}")


def _shot(driver, tmp_path: Path, name: str) -> None:
    assert_not_blank(save_screenshot(driver, tmp_path / "screenshots" / f"{name}.png"))


def test_an_operator_finds_an_order_and_redelivers_its_dead_event(deployment, tmp_path):
    gateway_url, sandbox_url = deployment
    behave = f"{sandbox_url}/subscriber/_behaviour"
    assert requests.post(behave, json={"mode": "down"}, timeout=5).status_code == 200
    # a real PATCH; the Ongoing sandbox then fires its webhooks, which become events nobody can deliver
    reply = requests.patch(f"{gateway_url}/orders/SO-1004", json={"status": "picked"}, headers=API, timeout=10)
    assert reply.status_code == 200, reply.text

    def dead_picked():
        events = requests.get(f"{gateway_url}/events?order_id=1004&state=dead", headers=API, timeout=5).json()
        return [item["event"]["id"] for item in events["events"] if item["event"]["type"] == "order.picked"]

    (event_id,) = _wait_until(dead_picked, "the order.picked delivery to die")

    with chromium_session(tmp_path / "browser") as driver:
        driver.get(f"{gateway_url}/console")
        wait_for_title(driver, "Log in · Order gateway")
        _shot(driver, tmp_path, "1-login")
        wait_for_element(driver, By.ID, "key").send_keys(DEMO_KEY)
        driver.find_element(By.ID, "log-in").click()

        wait_for_title(driver, "Overview · Order gateway")
        wait_for_text(driver, "signed in as demo")
        connection = wait_for_element(driver, By.ID, "connection-ongoing-demo")
        assert "breaker closed" in connection.text and "failed in the last hour" in connection.text
        assert connection.find_elements(By.CSS_SELECTOR, "svg.latency")
        dead_row = driver.find_element(By.CSS_SELECTOR, f'tr.dead[data-event="{event_id}"]')
        assert "demo" in dead_row.text and "HTTP 503" in dead_row.text
        _shot(driver, tmp_path, "2-overview")

        search = driver.find_element(By.ID, "order-id")
        search.send_keys("SO-1004")
        driver.find_element(By.ID, "find-order").click()
        wait_for_title(driver, "SO-1004 · Order gateway")
        exchange = wait_for_element(driver, By.CSS_SELECTOR, "li.exchange.outcome-ok")
        assert "UpdateOrder on ongoing-demo" in exchange.text and "ok" in exchange.text
        exchange.find_element(By.TAG_NAME, "summary").click()  # open it: the request and the reply side by side
        request_body = wait_for_element(driver, By.CSS_SELECTOR, "li.exchange pre.request-body")
        assert "<Password>********</Password>" in request_body.text
        assert "<OrderStatus>400</OrderStatus>" in request_body.text  # picked, as the PATCH asked
        assert "UpdateOrderResult" in driver.find_element(By.CSS_SELECTOR, "li.exchange pre.reply-body").text
        picked = driver.find_element(By.CSS_SELECTOR, f'li.event[data-event="{event_id}"]')
        assert "order.picked" in picked.text
        assert picked.find_element(By.CSS_SELECTOR, 'tr[data-subscriber="demo"] .delivery-state').text == "dead"
        _shot(driver, tmp_path, "3-order")

        assert requests.post(behave, json={"mode": "up"}, timeout=5).status_code == 200
        picked.find_element(By.CSS_SELECTOR, "button.redeliver").click()
        wait_for_text(driver, f"Event {event_id} is queued again for demo.")
        assert driver.current_url.endswith("/console/orders?order_id=SO-1004&connection=")

        def delivered():
            driver.refresh()
            state = driver.find_element(
                By.CSS_SELECTOR, f'li.event[data-event="{event_id}"] tr[data-subscriber="demo"] .delivery-state')
            return state.text == "delivered"

        _wait_until(delivered, "the redelivered event to be delivered")
        assert "redelivery asked by demo" in page_text(driver)
        _shot(driver, tmp_path, "4-redelivered")

    received = requests.get(f"{sandbox_url}/subscriber/events", timeout=5).json()["received"]
    assert [record["event"]["id"] for record in received].count(event_id) == 1
