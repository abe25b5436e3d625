"""The console in a real browser (Debian's Chromium driven by Playwright) against the real gateway on a
real socket, in front of the fake Ollama: sign-in, keys shown once and revoked, plans, a user's plan, a
chart drawn from real usage, the CSV, a member confined to its own data, cross-site POSTs refused, model
pulls with progress. The same tests write the screenshots in docs/."""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ollama_gate.domain.keys import KEY_PREFIX
from ollama_gate.domain.sign_in_attempts import DEFAULT_FAILURES
from tests.integration.conftest import gateway_per_module
from tests.support.gateway import HIGH_LIMITS, USAGE_POLLS, GatewayProcess
from tests.support.services import installed_tool

try:
    from playwright import sync_api as playwright_sync
    from playwright.sync_api import Browser, BrowserContext, Page, Playwright, expect
except ImportError:  # a dev dependency: only a bare install lacks it
    if os.environ.get("OLLAMA_GATE_TEST_REQUIRE_SERVICES") == "1":
        raise
    pytest.skip("playwright is not installed (pip install -e '.[dev]')", allow_module_level=True)

ADMIN_TOKEN = "console-admin-token-0123456789"
ADMIN = {"X-Admin-Token": ADMIN_TOKEN}
DOCS = Path(__file__).resolve().parents[2] / "docs"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

gate = gateway_per_module(
    HIGH_LIMITS | {"ADMIN_TOKEN": ADMIN_TOKEN, "CONSOLE_SECRET": "c" * 64}, upstream="module_ollama_server"
)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with playwright_sync.sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(executable_path=installed_tool("chromium"), args=CHROMIUM_ARGS)
    yield launched
    launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    made = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    made.set_default_timeout(15_000)
    yield made
    made.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


# -- helpers -----------------------------------------------------------------------------------------


def sign_in(page: Page, gate: GatewayProcess, credential: str) -> None:
    page.goto(gate.url + "/console/login")
    page.get_by_label("Admin token or API key").fill(credential)
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_load_state()


def screenshot(page: Page, name: str, full_page: bool = True) -> None:
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / f"console-{name}.png"), full_page=full_page)


def api_key(gate: GatewayProcess, user: str) -> str:
    created = httpx.post(gate.url + "/api/keys", params={"user_id": user}, headers=ADMIN, timeout=10)
    assert created.status_code == 201, created.text
    secret: str = created.json()["key"]
    return secret


def generate(gate: GatewayProcess, key: str, prompt: str) -> None:
    body = {"model": "smollm:latest", "prompt": prompt, "stream": False}
    answer = httpx.post(gate.url + "/api/generate", json=body, headers={"X-API-Key": key}, timeout=10)
    assert answer.status_code == 200, answer.text


def usage_of(gate: GatewayProcess, user: str, at_least: int) -> list[dict[str, Any]]:
    """The user's usage rows once the background writer has stored at least `at_least`."""
    rows: list[dict[str, Any]] = []
    for _ in range(USAGE_POLLS):
        answer = httpx.get(
            gate.url + "/api/usage", params={"user_id": user, "limit": 1000}, headers=ADMIN, timeout=10
        )
        rows = answer.json()["logs"]
        if len(rows) >= at_least:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"{user}: {len(rows)} usage rows, expected {at_least}")


def unlabelled_inputs(page: Page) -> list[str]:
    """Visible form controls without a label (or an aria-label): there must be none."""
    found: list[str] = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
            .filter(e => e.type !== 'hidden' && !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
            .map(e => e.outerHTML)"""
    )
    return found


# -- sign-in -----------------------------------------------------------------------------------------


def test_a_visitor_is_sent_to_sign_in_and_a_wrong_token_is_refused(gate: GatewayProcess, page: Page) -> None:
    page.goto(gate.url + "/console/overview")
    assert page.url.endswith("/console/login")
    assert unlabelled_inputs(page) == []
    screenshot(page, "login")
    page.get_by_label("Admin token or API key").fill("not-the-token")
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("not valid")
    assert page.url.endswith("/console/login")
    # The credential never lands in a URL, and the skip link comes first on the keyboard.
    assert "not-the-token" not in page.url
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"


def test_the_admin_signs_in_with_a_cookie_that_holds_no_token(
    gate: GatewayProcess, page: Page, context: BrowserContext
) -> None:
    sign_in(page, gate, ADMIN_TOKEN)
    assert page.url.endswith("/console/overview")
    expect(page.get_by_role("heading", name="Overview", level=1)).to_be_visible()
    (cookie,) = [c for c in context.cookies() if c["name"] == "ollama_gate_console"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert cookie["expires"] > time.time() + 3600
    assert ADMIN_TOKEN not in cookie["value"]
    # Signing out ends it.
    page.get_by_role("button", name="Sign out").click()
    assert page.url.endswith("/console/login")
    page.goto(gate.url + "/console/keys")
    assert page.url.endswith("/console/login")


# -- keys and plans ----------------------------------------------------------------------------------


def test_a_new_key_is_shown_once_works_and_is_revoked(
    gate: GatewayProcess, page: Page, context: BrowserContext
) -> None:
    sign_in(page, gate, ADMIN_TOKEN)
    page.goto(gate.url + "/console/keys")
    assert unlabelled_inputs(page) == []
    page.get_by_label("User id").fill("bob")
    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_label("The new key").input_value()
    assert secret.startswith(KEY_PREFIX)
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#copy-status")).to_have_text("Copied to the clipboard.")
    screenshot(page, "keys")
    assert httpx.get(gate.url + "/api/me", headers={"X-API-Key": secret}, timeout=10).status_code == 200

    # Shown once: the page again does not have it, nor does its URL.
    page.goto(gate.url + "/console/keys")
    assert secret not in page.content() and secret not in page.url
    row = page.locator("#keys tbody tr", has_text="laptop").filter(has_text="bob")
    expect(row.locator(".state")).to_have_text("active")
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("status")).to_have_text("The key was revoked.")
    expect(
        page.locator("#keys tbody tr", has_text="laptop").filter(has_text="bob").locator(".state")
    ).to_have_text("revoked")
    assert httpx.get(gate.url + "/api/me", headers={"X-API-Key": secret}, timeout=10).status_code == 401


def test_a_plan_is_edited_with_messages_and_a_user_is_put_on_it(gate: GatewayProcess, page: Page) -> None:
    api_key(gate, "carol")
    sign_in(page, gate, ADMIN_TOKEN)
    page.goto(gate.url + "/console/plans")
    assert unlabelled_inputs(page) == []
    new = page.locator("form[data-plan='']")
    new.get_by_label("name", exact=True).fill("team")
    new.get_by_label("requests").fill("30")  # not N/W
    new.get_by_role("button", name="Create plan").click()
    expect(page.get_by_role("alert")).to_contain_text("requests")
    assert page.locator("form[data-plan=''] input[name=requests]").get_attribute("aria-invalid") == "true"
    new = page.locator("form[data-plan='']")
    new.get_by_label("requests").fill("120/60")
    new.get_by_label("concurrency").fill("3")
    new.get_by_label("models").fill("smollm*, llama3.2:*")
    new.get_by_role("button", name="Create plan").click()
    expect(page.get_by_role("status")).to_have_text("Plan team saved.")
    screenshot(page, "plans")
    plan = httpx.get(gate.url + "/api/plans/team", headers=ADMIN, timeout=10).json()
    assert (plan["requests"], plan["concurrency"], plan["models"]) == ("120/60", 3, ["smollm*", "llama3.2:*"])

    page.goto(gate.url + "/console/keys")
    row = page.locator("#users tr[data-user='carol']")
    row.get_by_label("Plan of carol").select_option("team")
    row.get_by_role("button", name="Set plan").click()
    expect(page.get_by_role("status")).to_have_text("The plan was changed.")
    assert httpx.get(gate.url + "/api/users/carol", headers=ADMIN, timeout=10).json()["plan"] == "team"
    expect(page.locator("#users tr[data-user='carol'] select")).to_have_value("team")


# -- usage, charts, CSV --------------------------------------------------------------------------------


def test_the_overview_draws_charts_from_real_usage(
    gate: GatewayProcess, page: Page, browser: Browser
) -> None:
    key = api_key(gate, "erin")
    for n in range(7):
        generate(gate, key, f"chart request {n}")
    usage_of(gate, "erin", 7)
    sign_in(page, gate, ADMIN_TOKEN)
    page.goto(gate.url + "/console/overview")
    chart = page.locator("#chart-requests-hour")
    expect(chart.locator("canvas")).to_be_visible()
    assert int(chart.get_attribute("data-points") or 0) == 60
    assert float(chart.get_attribute("data-total") or 0) >= 7
    assert float(page.locator("#chart-tokens-hour").get_attribute("data-total") or 0) > 0
    # uPlot drew the same numbers: its data for the requests series sums to the requests made.
    drawn = page.evaluate("window.consoleCharts['chart-requests-hour'].data[1].reduce((a, b) => a + b, 0)")
    assert drawn >= 7
    expect(page.locator("#top-users")).to_contain_text("erin")
    expect(page.locator(".stat", has_text="slots busy")).to_be_visible()
    screenshot(page, "overview")

    # Readable on a phone: nothing wider than the screen.
    phone = browser.new_context(
        viewport={"width": 375, "height": 800}, storage_state=page.context.storage_state()
    )
    small = phone.new_page()
    small.goto(gate.url + "/console/overview")
    expect(small.locator("#chart-requests-hour canvas")).to_be_visible()
    assert small.evaluate("document.documentElement.scrollWidth") <= 375
    screenshot(small, "phone")
    phone.close()


def test_the_usage_page_filters_summarises_and_downloads_the_csv(gate: GatewayProcess, page: Page) -> None:
    key = api_key(gate, "frank")
    for n in range(3):
        generate(gate, key, f"usage request {n}")
    rows = usage_of(gate, "frank", 3)
    sign_in(page, gate, ADMIN_TOKEN)
    page.goto(gate.url + "/console/usage")
    assert unlabelled_inputs(page) == []
    page.get_by_label("User", exact=True).fill("frank")
    page.get_by_label("Summary by", exact=True).select_option("model")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#usage-rows tbody tr")).to_have_count(len(rows))
    expect(page.locator("#summary tbody tr").first).to_contain_text("smollm:latest")
    expect(page.locator("#summary tbody tr").first.locator("td").first).to_have_text(str(len(rows)))
    screenshot(page, "usage")
    with page.expect_download() as waiting:
        page.get_by_role("link", name="Download CSV").click()
    download = waiting.value
    text = Path(download.path()).read_text()
    table = list(csv.DictReader(io.StringIO(text)))
    assert {row["user"] for row in table} == {"frank"} and len(table) == len(rows)
    assert download.suggested_filename == "usage.csv"


def test_a_bad_filter_is_a_message_not_an_error(gate: GatewayProcess, page: Page) -> None:
    sign_in(page, gate, ADMIN_TOKEN)
    answer = page.goto(gate.url + "/console/usage?since=yesterday")
    assert answer is not None and answer.status == 400
    expect(page.get_by_role("alert")).to_contain_text("since must be an ISO 8601 date")
    answer = page.goto(gate.url + "/console/nowhere")
    assert answer is not None and answer.status == 404
    expect(page.get_by_role("alert")).to_contain_text("there is no console page at /console/nowhere")
    # A form that fails validation is a message in its page, the visitor's input kept.
    page.goto(gate.url + "/console/keys")
    page.get_by_label("User id").fill("admin")  # reserved
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("alert")).to_contain_text("reserved")
    expect(page.get_by_label("User id")).to_have_value("admin")


# -- a member -----------------------------------------------------------------------------------------


def test_a_member_sees_only_its_own_keys_and_usage(gate: GatewayProcess, page: Page) -> None:
    mine, theirs = api_key(gate, "grace"), api_key(gate, "heidi")
    generate(gate, mine, "grace asks")
    generate(gate, theirs, "heidi asks")
    usage_of(gate, "grace", 1)
    usage_of(gate, "heidi", 1)
    sign_in(page, gate, mine)
    assert page.url.endswith("/console/usage")
    expect(page.get_by_role("heading", name="My usage")).to_be_visible()
    users = set(page.locator("#usage-rows tbody tr td:nth-child(3)").all_inner_texts())
    assert users == {"grace"}
    # Asking for someone else's rows changes nothing: a member's scope is itself.
    page.goto(gate.url + "/console/usage?user_id=heidi")
    assert set(page.locator("#usage-rows tbody tr td:nth-child(3)").all_inner_texts()) == {"grace"}
    with page.expect_download() as waiting:
        page.get_by_role("link", name="Download CSV").click()
    table = list(csv.DictReader(io.StringIO(Path(waiting.value.path()).read_text())))
    assert table and {row["user"] for row in table} == {"grace"}
    page.goto(gate.url + "/console/keys")
    assert "heidi" not in page.locator("main").inner_text()
    screenshot(page, "member")
    for admin_page in ("overview", "plans", "models"):
        answer = page.goto(gate.url + f"/console/{admin_page}")
        assert answer is not None and answer.status == 403
        expect(page.get_by_role("alert")).to_contain_text("admins only")
    # The member's session ends once its key is revoked.
    key_id = httpx.get(gate.url + "/api/keys", params={"user_id": "grace"}, headers=ADMIN, timeout=10).json()
    httpx.delete(gate.url + f"/api/keys/{key_id['keys'][0]['id']}", headers=ADMIN, timeout=10)
    page.goto(gate.url + "/console/usage")
    assert page.url.endswith("/console/login")


# -- cross-site requests ---------------------------------------------------------------------------------


def test_a_cross_site_post_is_refused(gate: GatewayProcess, page: Page, context: BrowserContext) -> None:
    sign_in(page, gate, ADMIN_TOKEN)
    keys_before = len(httpx.get(gate.url + "/api/keys", headers=ADMIN, timeout=10).json()["keys"])
    # A page on another site whose form posts to the console (served by the browser's router).
    evil = "http://evil.example/"
    form = (
        f'<form id="f" method="post" action="{gate.url}/console/keys">'
        '<input name="user_id" value="mallory"><input name="csrf_token" value="guess"></form>'
        "<script>document.getElementById('f').submit()</script>"
    )
    page.route(evil, lambda route: route.fulfill(status=200, content_type="text/html", body=form))
    with page.expect_response(f"{gate.url}/console/keys") as waiting:
        page.goto(evil)
    assert waiting.value.status == 403
    expect(page.get_by_role("alert")).to_contain_text("cross-site request refused")
    # With the session cookie itself (not sent cross-site by the browser, sent here on purpose):
    # a foreign Origin is refused, and so is the right origin without the form token.
    cookie = {c["name"]: c["value"] for c in context.cookies()}
    jar = {"ollama_gate_console": cookie["ollama_gate_console"]}
    foreign = httpx.post(
        gate.url + "/console/keys",
        data={"user_id": "mallory"},
        cookies=jar,
        headers={"Origin": "http://evil.example"},
        timeout=10,
    )
    tokenless = httpx.post(
        gate.url + "/console/keys",
        data={"user_id": "mallory"},
        cookies=jar,
        headers={"Origin": gate.url},
        timeout=10,
    )
    assert (foreign.status_code, tokenless.status_code) == (403, 403)
    assert len(httpx.get(gate.url + "/api/keys", headers=ADMIN, timeout=10).json()["keys"]) == keys_before


guarded_gate = gateway_per_module(
    HIGH_LIMITS | {"ADMIN_TOKEN": ADMIN_TOKEN, "CONSOLE_SECRET": "g" * 64}, upstream="module_ollama_server"
)


def test_an_address_that_keeps_guessing_the_token_is_refused_for_a_while(
    guarded_gate: GatewayProcess,
) -> None:
    """Its own gateway: the lock-out it provokes would lock every other test of this module out too."""

    def attempt(credential: str) -> httpx.Response:
        return httpx.post(
            guarded_gate.url + "/console/login",
            data={"credential": credential},
            headers={"Origin": guarded_gate.url},
            timeout=10,
        )

    guesses = [attempt(f"guess-{n}").status_code for n in range(DEFAULT_FAILURES)]
    assert guesses == [401] * DEFAULT_FAILURES
    locked = attempt(ADMIN_TOKEN)  # the right token too: nothing is checked while locked out
    assert locked.status_code == 429
    assert "too many failed sign-ins" in locked.text
    assert "ollama_gate_console" not in locked.cookies


# -- models -----------------------------------------------------------------------------------------------


def test_a_model_is_pulled_with_progress_and_deleted(gate: GatewayProcess, page: Page) -> None:
    sign_in(page, gate, ADMIN_TOKEN)
    page.goto(gate.url + "/console/models")
    assert unlabelled_inputs(page) == []
    server = page.locator("section.upstream").first
    server.get_by_label("Pull a model onto").fill("tinyllama:latest")
    server.get_by_role("button", name="Pull").click()
    expect(server.locator(".pull-status")).to_have_text("Pulled.")
    assert server.locator("progress").evaluate("bar => bar.value") == 100
    screenshot(page, "models")
    page.reload()
    row = page.locator("section.upstream").first.locator("tr", has_text="tinyllama:latest")
    expect(row).to_have_count(1)
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Delete").click()
    expect(page.locator(".notice")).to_have_text("Model tinyllama:latest deleted.")
    expect(page.locator("section.upstream").first.locator("tr", has_text="tinyllama:latest")).to_have_count(0)
