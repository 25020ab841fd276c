"""The Airflow UI in headless Chromium, driven by Playwright: log in, trigger price_model_retrain from its
Params form, open the evaluation report, read the promotion ledger page, and answer the approval task.

Starts a private Airflow (api-server, scheduler, dag-processor; SQLite, LocalExecutor) with this
repository's DAGs and plugin, on a tiny lake (every 8th bundled sale, ingested with the task functions),
with ``HOMEWORTH_PROMOTION_APPROVAL=true``. Playwright (PyPI ``playwright``) launches Debian's
``chromium`` through ``executable_path``: no browser download. The pages are kept for the README as
``docs/ui-retrain.png`` (the run's report tab), ``docs/ui-ledger.png`` and ``docs/ui-approval.png``.

Skipped, saying why, when Chromium is not installed (``apt-get install -y chromium``; set
HOMEWORTH_CHROMIUM to use another binary) or Playwright is not. Every process it starts is stopped at the
end, and the test checks that none is left. The tests run in file order: each builds on the one before.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from datetime import date, timedelta
from pathlib import Path

import pytest

from tests.kc import KC_DATA_PATH, KC_SPEC_PATH
from tests.support import free_port, local_airflow_env

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
LOGICAL = "2015-05-28T03:00"  # the as-of date typed into the trigger form (UTC)
FORM = {"max_epochs": "3", "max_mdape": "0.9", "min_ppe10": "0"}  # Params typed into the trigger form
VIEWPORT = {"width": 1280, "height": 800}
PNG = b"\x89PNG\r\n\x1a\n"


def chromium_binary() -> str | None:
    for candidate in (os.environ.get("HOMEWORTH_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _playwright_missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"playwright is not installed ({exc}); `make venv` installs it from requirements.txt"
    return None


pytestmark = [
    pytest.mark.skipif(chromium_binary() is None, reason="headless Chromium not installed (apt-get install -y chromium)"),
    pytest.mark.skipif(_playwright_missing() is not None, reason=_playwright_missing() or ""),
]


# ---------------------------------------------------------------------------------------------
# A private Airflow over a tiny lake


def tiny_lake(home: Path) -> dict:
    """Every 8th bundled sale replayed into a private landing zone, ingested and validated in one go."""
    from tasks.core.settings import Settings
    from tasks.core.spec import load_spec
    from tasks.ingest.landing import ingest_interval
    from tasks.ingest.replay import replay
    from tasks.quality.validate import validate_interval

    settings = Settings(home=home)
    spec = load_spec(KC_SPEC_PATH)
    lines = gzip.decompress(KC_DATA_PATH.read_bytes()).decode().splitlines(keepends=True)
    source = home / "sales_slice.csv"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(lines[0] + "".join(lines[1::8]))
    replayed = replay(spec, settings.landing_uri, source=source)
    start, end = date.fromisoformat(replayed["first_day"]), date.fromisoformat(replayed["last_day"])
    ingest_interval(spec, settings.landing_uri, settings.lake_uri, start, end + timedelta(days=1))
    return validate_interval(spec, settings.lake_uri, start, end + timedelta(days=1))


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    from tools.airflow_local import LocalAirflow, migrate, set_password

    root = tmp_path_factory.mktemp("browser")
    port = free_port()
    # An inconclusive comparison waits for a person (answered in the browser below).
    env = local_airflow_env(root, port, parallelism=2, HOMEWORTH_PROMOTION_APPROVAL="true")
    migrate(env)
    set_password(root / "airflow", "admin", "admin")
    af = LocalAirflow(env, root / "logs", f"http://127.0.0.1:{port}")
    af.start()
    try:
        lake = tiny_lake(root / "state")  # while Airflow starts
        af.wait_healthy(timeout=240)
        af.wait_dag("price_model_retrain", timeout=240)
        af.unpause("price_model_retrain")
        yield af, root, lake
    finally:
        leftover = af.stop()
        assert not leftover, f"Airflow processes left running: {leftover}"


@pytest.fixture(scope="module")
def page(airflow):
    """One logged-in page of Debian's Chromium, launched by Playwright (no downloaded browser)."""
    from playwright.sync_api import expect, sync_playwright

    af = airflow[0]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_binary(), headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        try:
            pg = browser.new_context(viewport=VIEWPORT).new_page()
            pg.set_default_timeout(60_000)
            # Log in (SimpleAuthManager's form).
            pg.goto(f"{af.base_url}/")
            pg.locator("input[name=username]").fill("admin")
            pg.locator("input[name=password]").fill("admin")
            pg.locator("button[type=submit]").click()
            expect(pg).not_to_have_url(re.compile(r"/auth/login"), timeout=60_000)
            expect(pg.get_by_text("Dags", exact=True).first).to_be_visible(timeout=60_000)
            yield pg
        finally:
            browser.close()


def shot(pg, name: str) -> Path:
    """A screenshot of the page for the README, checked to be a real, small PNG."""
    path = DOCS / name
    time.sleep(1)  # let plots and fonts paint
    pg.screenshot(path=str(path))
    data = path.read_bytes()
    assert data[:8] == PNG and 20_000 < len(data) < 600_000, f"{path}: {len(data)} bytes"
    return path


def param_input(pg, name: str):
    """The number input of a DAG Param in the trigger form (found through its increment button)."""
    inc = pg.locator(f'[id="number-input:element_{name}:inc"]')
    inc.wait_for(state="attached", timeout=30_000)
    return pg.locator(f'[id="{inc.get_attribute("aria-controls")}"]')


def button(pg, text: str):
    """The button whose visible text is exactly ``text`` (icons aside)."""
    return pg.locator("button").filter(has_text=re.compile(rf"^\s*{re.escape(text)}\s*$")).first


def report_frame(pg):
    """The plugin page's iframe as a Playwright Frame (its document, title and text)."""
    handle = pg.locator("iframe").first.element_handle(timeout=60_000)
    return handle.content_frame()


# ---------------------------------------------------------------------------------------------
# The flows


def _trigger_from_form(pg, base: str) -> None:
    """Open price_model_retrain's trigger form, type the logical date and the Params, submit."""
    from playwright.sync_api import expect

    pg.goto(f"{base}/dags/price_model_retrain")
    button(pg, "Trigger").click()
    param_input(pg, "max_epochs")  # the Params form is there
    pg.locator("[data-testid=datetime-input]").click()
    popover = pg.locator("[data-scope=popover][data-part=content][data-state=open]")
    day, hour = LOGICAL.split("T")
    popover.locator('input[placeholder="YYYY/MM/DD"]').fill(day.replace("-", "/"))
    popover.locator('input[placeholder="YYYY/MM/DD"]').press("Tab")
    popover.locator('input[placeholder="HH:mm"]').fill(hour)
    popover.locator('input[placeholder="HH:mm"]').press("Tab")
    expect(pg.locator("[data-testid=datetime-input]")).to_have_text("May 28, 2015 03:00", timeout=10_000)
    if popover.count():
        pg.keyboard.press("Escape")
    for name, value in FORM.items():
        box = param_input(pg, name)
        box.fill(value)
        box.press("Tab")
        expect(box).to_have_value(value)
    pg.locator("[data-testid=trigger-dag-submit]").click()


def test_trigger_retrain_from_the_form_and_open_the_report(airflow, page):
    from playwright.sync_api import expect

    af, root, lake = airflow
    assert lake["rows_accepted"] > 2000
    _trigger_from_form(page, af.base_url)
    runs = []
    deadline = time.monotonic() + 30
    while not runs and time.monotonic() < deadline:
        runs = af.request("GET", "/api/v2/dags/price_model_retrain/dagRuns?limit=5")["dag_runs"]
        time.sleep(1)
    assert len(runs) == 1, "the form triggered one run"
    run = runs[0]
    assert run["logical_date"].startswith("2015-05-28T03:00"), run
    assert {k: str(run["conf"].get(k)) for k in FORM} == FORM, f"the form's Params reached the run: {run['conf']}"
    assert af.wait_run("price_model_retrain", run["dag_run_id"], timeout=300) == "success", \
        af.failed_tasks("price_model_retrain", run["dag_run_id"])
    promoted = af.xcom("price_model_retrain", run["dag_run_id"], "promote")
    assert promoted["promoted"] and promoted["ledger_event"]

    # The run's "Evaluation report" tab (a plugin external view) shows the report in an iframe.
    expect(page).to_have_url(re.compile(r"/runs/"), timeout=30_000)
    assert run["dag_run_id"] in urllib.request.unquote(page.url)
    page.get_by_text("Evaluation report", exact=True).first.click()
    frame_text = page.frame_locator("iframe").first.locator("body")
    expect(frame_text).to_contain_text("Predicted vs actual", timeout=90_000)
    assert report_frame(page).title().startswith("homeworth evaluation: model v1")
    shot(page, "ui-retrain.png")

    # The endpoint mounted in the API server answers behind Airflow's login.
    req = urllib.request.Request(f"{af.base_url}/homeworth/model", headers={"Authorization": f"Bearer {af._token()}"})  # noqa: SLF001
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert json.loads(resp.read())["model_version"] == "1"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{af.base_url}/homeworth/model", timeout=60)
    assert refused.value.code in (401, 403), "the mounted app must refuse a request without a login"


def test_the_ledger_page_shows_the_promotion(airflow, page):
    from playwright.sync_api import expect

    af, _, _ = airflow
    page.goto(f"{af.base_url}/plugin/homeworth-ledger")
    body = page.frame_locator("iframe").first.locator("body")
    expect(body).to_contain_text("Promotion ledger", timeout=60_000)
    expect(body).to_contain_text("none → v1")
    text = body.inner_text()
    assert "price_model_retrain" in text and "no champion yet" in text and "triggered by admin" in text, text[:1500]
    shot(page, "ui-ledger.png")


def _wait_for_approval(af, run_id: str) -> dict:
    path = f"/api/v2/dags/price_model_retrain/dagRuns/{run_id}/taskInstances"
    deadline, states = time.monotonic() + 240, {}
    while time.monotonic() < deadline:
        af.check_alive()
        states = {t["task_id"]: t["state"] for t in af.request("GET", path)["task_instances"]}
        if states.get("approval") == "awaiting_input" or af.run_state("price_model_retrain", run_id) in ("success",
                                                                                                         "failed"):
            break
        time.sleep(2)
    assert states.get("approval") == "awaiting_input", f"approval task state {states.get('approval')}; tasks {states}"
    verdict = af.request("GET", f"{path}/assess/xcomEntries/verdict?deserialize=true")["value"]
    return json.loads(verdict) if isinstance(verdict, str) else verdict


def test_an_inconclusive_result_waits_for_a_person_who_answers_in_the_browser(airflow, page):
    """The same Params, seed and data again: the paired intervals straddle 0, so a person decides."""
    from playwright.sync_api import expect

    af, root, _ = airflow
    conf = {k: float(v) if "." in v else int(v) for k, v in FORM.items()}
    run_id = af.trigger("price_model_retrain", logical_date="2015-05-28T04:00:00Z", conf=conf, run_id="same_again")
    assert _wait_for_approval(af, run_id)["outcome"] == "inconclusive"
    # Answer as a person would, not within the same second: Airflow 3.3's scheduler may still be handling
    # the executor event of the parked task, and an instant answer makes it retry and ask again.
    time.sleep(5)
    page.goto(f"{af.base_url}/dags/price_model_retrain/runs/{run_id}/tasks/approval/required_actions")
    expect(page.get_by_text("Promote model v2 over the champion?").first).to_be_visible(timeout=60_000)
    expect(page.get_by_text("inconclusive", exact=False).first).to_be_visible()
    promote = button(page, "Promote")
    expect(promote).to_be_enabled()
    shot(page, "ui-approval.png")
    promote.click()
    assert af.wait_run("price_model_retrain", run_id, timeout=300) == "success", af.failed_tasks("price_model_retrain", run_id)
    promoted = af.xcom("price_model_retrain", run_id, "promote")
    assert promoted["promoted"] and promoted["outcome"] == "inconclusive" and "chosen by admin" in promoted["reason"]
    events = [json.loads(f.read_text()) for f in (root / "state" / "lake" / "ledger").glob("*.json")]
    event = next(e for e in events if e["event_id"] == promoted["ledger_event"])
    assert event["actor"]["approved_by"] == "admin" and event["from_version"] == "1" and event["to_version"] == "2"
