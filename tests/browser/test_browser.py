"""The Airflow UI in headless Chromium: log in, trigger price_model_retrain from its Params form, open the report.

Starts a private Airflow (api-server, scheduler, dag-processor; SQLite, LocalExecutor) with this
repository's DAGs and plugin, on a tiny lake (every 8th bundled sale, ingested with the task
functions), and drives Chromium through the DevTools protocol with a small client written here on
``websockets`` (no Selenium, no Playwright). The report page, opened from the run's "Evaluation
report" tab that ``plugins/homeworth_plugin.py`` adds, is kept as ``docs/ui-retrain.png``.

Skipped when Chromium is not installed (``apt-get install -y chromium``); set HOMEWORTH_CHROMIUM to
use another binary. Every process it starts is stopped at the end, and the test checks that none is left.
"""

from __future__ import annotations

import base64
import gzip
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from datetime import date
from pathlib import Path

import pytest

from tests.kc import KC_DATA_PATH, KC_SPEC_PATH
from tests.support import free_port, local_airflow_env

REPO = Path(__file__).resolve().parents[2]
SCREENSHOT = REPO / "docs" / "ui-retrain.png"
LOGICAL = "2015-05-28T03:00"  # the as-of date typed into the trigger form (UTC)
FORM = {"max_epochs": "3", "max_mdape": "0.9", "min_ppe10": "0"}  # Params typed into the trigger form


def chromium_binary() -> str | None:
    for candidate in (os.environ.get("HOMEWORTH_CHROMIUM"), "/usr/lib/chromium/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


pytestmark = pytest.mark.skipif(chromium_binary() is None,
                                reason="headless Chromium not installed (apt-get install -y chromium)")


# ---------------------------------------------------------------------------------------------
# A minimal Chrome DevTools Protocol client


class Browser:
    """Headless Chromium with one page, driven over the DevTools protocol (flattened sessions)."""

    FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--remote-debugging-port=0", "--window-size=1400,900"]

    def __init__(self, binary: str, profile: Path):
        from websockets.sync.client import connect

        profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([binary, *self.FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or len(port_file.read_text().split()) < 2:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit {self.proc.poll()})")
            time.sleep(0.1)
        port, path = port_file.read_text().split()[:2]
        self.ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=64 * 2**20, open_timeout=30).__enter__()
        self._ids = itertools.count(1)
        self.events: list[dict] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime"):
            self.page(f"{domain}.enable")
        self.page("Emulation.setDeviceMetricsOverride", width=1400, height=900, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, session: str | None = None, timeout: float = 60, **params) -> dict:
        msg_id = next(self._ids)
        msg = {"id": msg_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout
        while True:
            raw = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if raw.get("id") == msg_id:
                if "error" in raw:
                    raise RuntimeError(f"{method}: {raw['error']}")
                return raw.get("result", {})
            self.events.append(raw)

    def page(self, method: str, **params) -> dict:
        return self.call(method, session=self.session, **params)

    def js(self, expression: str):
        out = self.page("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"javascript error: {out['exceptionDetails']}")
        return out["result"].get("value")

    def goto(self, url: str) -> None:
        self.page("Page.navigate", url=url)

    def wait(self, expression: str, timeout: float = 60, what: str = "") -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = self.js(expression)
            except RuntimeError:
                value = None
            if value:
                return value
            time.sleep(0.25)
        body = self.js("document.body ? document.body.innerText.slice(0, 1500) : ''")
        raise AssertionError(f"timed out waiting for {what or expression}; page {self.js('location.href')}:\n{body}")

    def key(self, key: str, code: str, vk: int) -> None:
        for kind in ("rawKeyDown", "keyUp"):
            self.page("Input.dispatchKeyEvent", type=kind, key=key, code=code, windowsVirtualKeyCode=vk)

    def type_into(self, element: str, text: str, commit: bool = True) -> None:
        """Select what an input holds and type ``text`` with real key events (React sees them), then Tab.

        ``element`` is a JavaScript expression for the input. Retried until the input holds ``text``:
        a controlled input may re-render between focusing and typing.
        """
        for _ in range(5):
            self.js(f"(() => {{ const e = {element}; e.scrollIntoView({{block: 'center'}}); e.focus(); e.select(); "
                    "return true; })()")
            self.page("Input.insertText", text=text)
            if self.js(f"{element}.value") == text:
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"could not type {text!r} into {element}: it holds {self.js(f'{element}.value')!r}")
        if commit:
            self.key("Tab", "Tab", 9)
            time.sleep(0.2)

    def screenshot(self, path: Path) -> None:
        data = self.page("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except Exception:  # noqa: BLE001 - the process is killed below anyway
            pass
        try:
            self.ws.__exit__(None, None, None)
        except Exception:  # noqa: BLE001
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------------
# A private Airflow over a tiny lake


def css(selector: str) -> str:
    return f"document.querySelector({json.dumps(selector)})"


def param_input(name: str) -> str:
    """The number input of a DAG Param in the trigger form (found through its increment button)."""
    return (f"document.getElementById((document.getElementById('number-input:element_{name}:inc') || "
            "{getAttribute: () => ''}).getAttribute('aria-controls'))")



def tiny_lake(home: Path) -> dict:
    """Every 8th bundled sale replayed into a private landing zone, ingested and validated in one go."""
    from tasks.core.settings import Settings
    from tasks.core.spec import load_spec
    from tasks.ingest.landing import ingest_interval
    from tasks.ingest.replay import replay
    from tasks.quality.validate import validate_interval

    settings = Settings(home=home)
    spec = load_spec(KC_SPEC_PATH)
    lines = gzip.decompress((KC_DATA_PATH).read_bytes()).decode().splitlines(keepends=True)
    source = home / "sales_slice.csv"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(lines[0] + "".join(lines[1::8]))
    replayed = replay(spec, settings.landing_uri, source=source)
    start, end = date.fromisoformat(replayed["first_day"]), date.fromisoformat(replayed["last_day"])
    from datetime import timedelta

    ingest_interval(spec, settings.landing_uri, settings.lake_uri, start, end + timedelta(days=1))
    return validate_interval(spec, settings.lake_uri, start, end + timedelta(days=1))


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    from tools.airflow_local import LocalAirflow, migrate, set_password

    root = tmp_path_factory.mktemp("browser")
    port = free_port()
    # An inconclusive comparison waits for a person (tested below, after the browser's run).
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
def browser(tmp_path_factory):
    b = Browser(chromium_binary(), tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield b
    finally:
        b.close()
        assert b.proc.poll() is not None, "chromium is stopped"


def test_trigger_retrain_from_the_form_and_open_the_report(airflow, browser):
    af, root, lake = airflow
    base = af.base_url
    assert lake["rows_accepted"] > 2000

    # 1. Log in (SimpleAuthManager's form).
    browser.goto(f"{base}/")
    browser.wait("document.querySelector('input[name=username]') !== null", 90, "the login form")
    browser.type_into(css("input[name=username]"), "admin", commit=False)
    browser.type_into(css("input[name=password]"), "admin", commit=False)
    browser.js("document.querySelector('button[type=submit]').click()")
    browser.wait("!location.pathname.includes('/auth/login') && document.body.innerText.includes('Dags')", 60,
                 "the home page after login")

    # 2. Trigger price_model_retrain from its form: the logical date, then the typed Params.
    browser.goto(f"{base}/dags/price_model_retrain")
    browser.wait("[...document.querySelectorAll('button')].some(b => b.innerText.trim() === 'Trigger')", 90,
                 "the Trigger button")
    browser.js("[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Trigger').click()")
    browser.wait(f"{param_input('max_epochs')} !== null", 30, "the Params form")
    picker = "[data-testid=datetime-input]"
    browser.js(f"document.querySelector('{picker}').click()")
    popover = "[data-scope=popover][data-part=content][data-state=open]"
    browser.wait(f"document.querySelector('{popover} input[placeholder=\"HH:mm\"]') !== null", 10, "the date picker")
    day, hour = LOGICAL.split("T")
    browser.type_into(css(f'{popover} input[placeholder="YYYY/MM/DD"]'), day.replace("-", "/"))
    browser.type_into(css(f'{popover} input[placeholder="HH:mm"]'), hour)
    browser.wait(f"document.querySelector('{picker}').innerText.trim() === 'May 28, 2015 03:00'", 10,
                 "the logical date in the picker")
    if browser.js(f"document.querySelector('{popover}') !== null"):
        browser.key("Escape", "Escape", 27)
    for name, value in FORM.items():
        browser.type_into(param_input(name), value)
    browser.js("document.querySelector('[data-testid=trigger-dag-submit]').click()")
    runs = []
    deadline = time.monotonic() + 30
    while not runs and time.monotonic() < deadline:
        runs = af.request("GET", "/api/v2/dags/price_model_retrain/dagRuns?limit=5")["dag_runs"]
        time.sleep(1)
    assert len(runs) == 1, "the form triggered one run"
    run = runs[0]
    assert run["logical_date"].startswith("2015-05-28T03:00"), run
    assert {k: str(run["conf"].get(k)) for k in FORM} == FORM, f"the form's Params reached the run: {run['conf']}"
    assert af.wait_run("price_model_retrain", run["dag_run_id"], timeout=240) == "success", \
        af.failed_tasks("price_model_retrain", run["dag_run_id"])
    promoted = af.xcom("price_model_retrain", run["dag_run_id"], "promote")
    assert promoted["promoted"] and promoted["ledger_event"]

    # 3. The run's "Evaluation report" tab (a plugin external view) shows the report in an iframe.
    browser.wait("location.pathname.includes('/runs/')", 30, "the run's page after triggering")
    assert run["dag_run_id"] in browser.js("decodeURIComponent(location.pathname)")
    tab = "[...document.querySelectorAll('a,button')].find(e => e.innerText.trim() === 'Evaluation report')"
    browser.wait(f"{tab} !== undefined", 30, "the Evaluation report tab")
    browser.js(f"{tab}.click()")
    frame = "document.querySelector('iframe') && document.querySelector('iframe').contentDocument"
    browser.wait(f"{frame} && {frame}.body && {frame}.body.innerText.includes('Predicted vs actual')", 90,
                 "the evaluation report in the run's tab")
    assert browser.js(f"{frame}.title").startswith("homeworth evaluation: model v1")
    time.sleep(1)  # let the plots paint
    SCREENSHOT.parent.mkdir(exist_ok=True)
    browser.screenshot(SCREENSHOT)
    assert SCREENSHOT.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and SCREENSHOT.stat().st_size > 20_000

    # 4. The ledger page in the navigation shows the promotion.
    browser.goto(f"{base}/plugin/homeworth-ledger")
    browser.wait(f"{frame} && {frame}.body && {frame}.body.innerText.includes('Promotion ledger') && "
                 f"{frame}.body.innerText.includes('none → v1')", 60, "the ledger")
    ledger_text = browser.js(f"{frame}.body.innerText")
    assert "price_model_retrain" in ledger_text and "no champion yet" in ledger_text and "triggered by admin" in ledger_text

    # 5. The endpoint mounted in the API server answers behind Airflow's login.
    token = af._token()  # noqa: SLF001
    req = urllib.request.Request(f"{base}/homeworth/model", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        assert json.loads(resp.read())["model_version"] == "1"
    try:
        urllib.request.urlopen(f"{base}/homeworth/model", timeout=60)
        raise AssertionError("the mounted app must refuse a request without a login")
    except urllib.error.HTTPError as exc:
        assert exc.code in (401, 403)


def test_an_inconclusive_result_waits_for_a_person(airflow):
    """The same Params, seed and data again: the paired intervals straddle 0, so a person decides."""
    af, root, _ = airflow
    conf = {k: float(v) if "." in v else int(v) for k, v in FORM.items()}
    run_id = af.trigger("price_model_retrain", logical_date="2015-05-28T04:00:00Z", conf=conf, run_id="same_again")
    path = f"/api/v2/dags/price_model_retrain/dagRuns/{run_id}/taskInstances"
    deadline = time.monotonic() + 180
    state = None
    while time.monotonic() < deadline:
        af.check_alive()
        states = {t["task_id"]: t["state"] for t in af.request("GET", path)["task_instances"]}
        state = states.get("approval")
        if state == "awaiting_input" or af.run_state("price_model_retrain", run_id) in ("success", "failed"):
            break
        time.sleep(2)
    assert state == "awaiting_input", f"approval task state {state}; tasks {states}"
    verdict = af.request("GET", f"{path}/assess/xcomEntries/verdict?deserialize=true")["value"]
    verdict = json.loads(verdict) if isinstance(verdict, str) else verdict
    assert verdict["outcome"] == "inconclusive", verdict
    # Answer as a person would, not within the same second: Airflow 3.3's scheduler may still be handling
    # the executor event of the parked task, and an instant answer makes it retry and ask again.
    time.sleep(5)
    af.request("PATCH", f"{path}/approval/-1/hitlDetails", {"chosen_options": ["Promote"]})
    assert af.wait_run("price_model_retrain", run_id, timeout=300) == "success", af.failed_tasks("price_model_retrain", run_id)
    promoted = af.xcom("price_model_retrain", run_id, "promote")
    assert promoted["promoted"] and promoted["outcome"] == "inconclusive" and "chosen by admin" in promoted["reason"]
    events = [json.loads(f.read_text()) for f in (root / "state" / "lake" / "ledger").glob("*.json")]
    event = next(e for e in events if e["event_id"] == promoted["ledger_event"])
    assert event["actor"]["approved_by"] == "admin" and event["from_version"] == "1" and event["to_version"] == "2"
