"""Data Docs (tasks/quality/datadocs.py via tasks.quality.validate): one page and JSON per day, failing expectations named,
written for failed validations too; the plugin that serves them; and a dag.test() of sales_ingest."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pendulum
import pytest

from tasks.core import lake as lake_paths
from tasks.core import storage
from tasks.ingest.landing import ingest_interval
from tasks.quality.datadocs import day_html_uri, day_json_uri, interval_html_uri
from tasks.quality.validate import ValidationFailed, validate_interval
from tests.kc import KC_HEADER
from tests.support import private_home

REPO = Path(__file__).resolve().parents[2]
DAY = date(2014, 10, 13)
NEXT = DAY + timedelta(days=1)
GOOD = '"7129300520","20141013T000000",221900,3,1,1180,5650,"1",0,0,3,7,1180,0,1955,0,"98178",47.5112,-122.257,1340,5650'
GOOD2 = '"4036801170","20141013T000000",380000,4,1.75,1760,7300,"1",0,0,3,7,880,880,1956,0,"98008",47.6034,-122.125,1680,7500'
NEGATIVE = GOOD2.replace("380000", "-5000")
FAR_ZIP = GOOD.replace("7129300520", "7129300521").replace('"98178"', '"10001"')
PRICE = "expect_column_values_to_be_between(price, min_value=1000.0, max_value=100000000.0)"
ZIP = "expect_column_values_to_be_in_set(zipcode, value_set=[70 values])"


def land(root: Path, day: date, name: str, lines: list[str]) -> None:
    p = root / "landing" / day.isoformat() / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join([KC_HEADER, *lines]) + "\n")


def run(spec, root: Path, start: date = DAY, end: date = NEXT, params: dict | None = None, **kw) -> dict:
    ingest_interval(spec, str(root / "landing"), str(root / "lake"), start, end)
    return validate_interval(spec, str(root / "lake"), start, end, params, **kw)


def by_name(doc: dict) -> dict[str, dict]:
    return {e["expectation"]: e for e in doc["expectations"]}


def test_a_day_page_names_the_failing_expectations(spec, tmp_path):
    land(tmp_path, DAY, "sales.csv", [GOOD, NEGATIVE])
    land(tmp_path, DAY, "late.csv", [FAR_ZIP, GOOD.replace("221900", '"call agent"').replace("7129300520", "7129300522")])
    out = run(spec, tmp_path, run_id="manual__1")
    lake = str(tmp_path / "lake")
    assert out["data_docs"] == day_html_uri(lake, DAY.isoformat()) and Path(out["data_docs"]).exists()
    doc = json.loads(Path(day_json_uri(lake, DAY.isoformat())).read_text())
    assert doc["status"] == "quarantined" and doc["run_id"] == "manual__1" and doc["suite"] == "king_county_sales"
    assert doc["rows"] == {"read": 4, "accepted": 1, "quarantined": 3}
    assert [(f["file"].rsplit("/", 1)[1], f["rows"]) for f in doc["files"]] == [("late.csv", 2), ("sales.csv", 2)]
    exps = by_name(doc)
    price, zipcode = exps[PRICE], exps[ZIP]
    assert (price["severity"], price["scope"], price["success"], price["unexpected_count"]) == ("row", "day", False, 1)
    assert price["sample"] == [{"value": "-5000.0", "file": str(tmp_path / "landing" / "2014-10-13" / "sales.csv"), "row": 2}]
    assert zipcode["unexpected_count"] == 1 and zipcode["sample"][0]["value"] == "'10001'"
    coercion = next(e for e in doc["expectations"] if e["type"] == "coercion")
    assert coercion["unexpected_count"] == 1 and "call agent" in coercion["sample"][0]["value"]
    rowcount = next(e for e in doc["expectations"] if e["type"] == "expect_table_row_count_to_be_between")
    assert rowcount["scope"] == "interval" and rowcount["success"] and rowcount["observed"] == "observed 4"
    assert all(e["severity"] in ("row", "batch") for e in doc["expectations"])
    page = Path(out["data_docs"]).read_text()
    for text in (PRICE, "expect_column_values_to_be_in_set(zipcode", "-5000.0", "sales.csv", "late.csv", "quarantined",
                 "Failing expectations", "manual__1"):
        assert text.replace("'", "&#x27;") in page or text in page, text
    assert "http" not in page.lower().replace("http-equiv", ""), "self-contained: no external resources"
    # The interval summary JSON the ledger reads still has the same shape, plus the page.
    summary = json.loads((tmp_path / "lake" / "_validation" / f"{DAY}_{NEXT}.json").read_text())
    assert summary["data_docs"] == out["data_docs"] and summary["rows_quarantined"] == 3


def test_every_day_of_a_bulk_interval_gets_its_own_page(spec, tmp_path):
    d2 = DAY + timedelta(days=1)
    land(tmp_path, DAY, "s.csv", [GOOD, NEGATIVE])
    land(tmp_path, d2, "s.csv", [GOOD2.replace("20141013", "20141014")])
    out = run(spec, tmp_path, DAY, DAY + timedelta(days=3))
    lake = str(tmp_path / "lake")
    assert out["data_docs"] == interval_html_uri(lake, DAY.isoformat(), (DAY + timedelta(days=3)).isoformat())
    assert out["data_docs_days"] == 3
    docs = {d: json.loads(Path(day_json_uri(lake, d)).read_text()) for d in ("2014-10-13", "2014-10-14", "2014-10-15")}
    assert [docs[d]["status"] for d in sorted(docs)] == ["quarantined", "passed", "passed"]
    assert by_name(docs["2014-10-13"])[PRICE]["unexpected_count"] == 1
    assert by_name(docs["2014-10-14"])[PRICE]["success"] and docs["2014-10-14"]["rows"]["read"] == 1
    assert docs["2014-10-15"]["files"] == [] and docs["2014-10-15"]["rows"] == {"read": 0, "accepted": 0, "quarantined": 0}
    index = Path(out["data_docs"]).read_text()
    assert all(f'href="ds={d}/data_docs.html"' in index for d in docs)
    assert all(Path(day_html_uri(lake, d)).exists() for d in docs)


def test_a_failed_validation_still_writes_its_data_docs(spec, tmp_path):
    land(tmp_path, DAY, "a.csv", [GOOD, GOOD2, FAR_ZIP])
    with pytest.raises(ValidationFailed) as exc:
        run(spec, tmp_path, params={"max_rows_per_day": 2})
    details, lake = exc.value.details, str(tmp_path / "lake")
    assert details["data_docs"] == day_html_uri(lake, DAY.isoformat()) and f"Data Docs: {details['data_docs']}" in str(exc.value)
    assert details["rows_read"] == 3 and details["interval"] == ["2014-10-13", "2014-10-13"]
    assert details["failed"] == [{"expectation": "expect_table_row_count_to_be_between(min_value=0, max_value=2)",
                                  "severity": "batch", "evidence": "observed 3"}]
    doc = json.loads(Path(day_json_uri(lake, DAY.isoformat())).read_text())
    assert doc["status"] == "failed" and doc["rows"]["accepted"] is None and doc["partitions"] == {}
    rowcount = by_name(doc)["expect_table_row_count_to_be_between(min_value=0, max_value=2)"]
    assert not rowcount["success"] and rowcount["observed"] == "observed 3"
    assert by_name(doc)[ZIP]["unexpected_count"] == 1  # row-level findings are shown too
    page = Path(details["data_docs"]).read_text()
    assert "nothing was written" in page and "expect_table_row_count_to_be_between(min_value=0, max_value=2)" in page
    # Nothing else: no partitions, and no interval summary for the ledger to count.
    assert not storage.exists(lake_paths.partition_uri(lake, "validated", DAY))
    assert not (tmp_path / "lake" / "_validation" / f"{DAY}_{NEXT}.json").exists()


def test_same_input_same_pages(spec, tmp_path):
    land(tmp_path, DAY, "s.csv", [GOOD, NEGATIVE])
    first = run(spec, tmp_path)
    pages = {p: p.read_bytes() for p in (tmp_path / "lake" / "_validation").rglob("*") if p.is_file()}
    assert run(spec, tmp_path) == first
    assert {p: p.read_bytes() for p in pages} == pages


def test_plugin_serves_only_data_docs(spec, tmp_path, monkeypatch):
    import importlib.util

    from fastapi.testclient import TestClient

    from tasks.core.settings import get_settings

    monkeypatch.setenv("HOMEWORTH_LAKE_URI", str(tmp_path / "lake"))
    get_settings.cache_clear()
    try:
        land(tmp_path, DAY, "s.csv", [GOOD, NEGATIVE])
        run(spec, tmp_path)
        mod_spec = importlib.util.spec_from_file_location("homeworth_datadocs", REPO / "plugins" / "homeworth_datadocs.py")
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
        plugin = module.HomeworthDataDocsPlugin
        assert plugin.fastapi_apps[0]["url_prefix"] == "/homeworth-datadocs"
        assert all(not v["href"].startswith("/") for v in plugin.external_views)
        from tasks.serving.datadocs_app import create_app

        client = TestClient(create_app())
        assert f"{DAY}_{NEXT}.html" in client.get("/").text
        page = client.get(f"/ds={DAY}/data_docs.html")
        assert page.status_code == 200 and PRICE in page.text and page.headers["content-type"].startswith("text/html")
        assert client.get(f"/ds={DAY}/result.json").json()["day"] == DAY.isoformat()
        for bad in ("../raw/ds=2014-10-13/part-0.parquet", "ds=2014-10-13/../../raw", "ds=2099-01-01/data_docs.html"):
            assert client.get(f"/{bad}").status_code == 404, bad
        # Mounted in the API server, the app is behind Airflow's login.
        assert TestClient(module.app).get(f"/ds={DAY}/data_docs.html").status_code in (401, 403)
    finally:
        get_settings.cache_clear()
    # Every Airflow component imports plugins: this one must stay light.
    code = ("import sys, runpy; runpy.run_path('plugins/homeworth_datadocs.py'); print(sorted(m for m in "
            "('torch', 'mlflow', 'great_expectations', 'polars', 'pyarrow', 'fastapi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stderr[-2000:]


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def ingest_run(tmp_path_factory, airflow_db):
    """One daily dag.test() of sales_ingest on a private landing zone (a good and a bad row)."""
    from airflow.dag_processing.dagbag import DagBag

    from tasks.core.settings import get_settings

    home = tmp_path_factory.mktemp("datadocs_e2e")
    with private_home(home / "state"):
        settings = get_settings()
        land(Path(settings.home), DAY, "sales.csv", [GOOD, NEGATIVE])
        dag = DagBag(dag_folder=str(REPO / "dags" / "sales_ingest.py")).dags["sales_ingest"]
        # dag.test() applies run_conf to the DAG object's params: say explicitly that this is not a bulk load.
        dr = dag.test(logical_date=pendulum.datetime(DAY.year, DAY.month, DAY.day, tz="UTC"),
                      run_conf={"from_date": None, "to_date": None})
        yield settings, dr


def _xcoms(dr, task_id: str) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id, task_ids=task_id)).all()
        return {r.key: XComModel.deserialize_value(r) for r in rows}


@pytest.mark.e2e
def test_dag_run_returns_and_links_the_data_docs(ingest_run):
    settings, dr = ingest_run
    assert dr.state == "success"
    xcoms = _xcoms(dr, "validate")
    page = day_html_uri(settings.lake_uri, DAY.isoformat())
    result = xcoms["return_value"]
    assert result["data_docs"] == page and xcoms["data_docs"] == page and Path(page).exists()
    assert (result["rows_accepted"], result["rows_quarantined"]) == (1, 1)
    assert result["failing_expectations"] == {PRICE: 1}
    assert PRICE in Path(page).read_text()
    link = xcoms["_link_DataDocsLink"]
    assert link.endswith(f"/homeworth-datadocs/ds={DAY}/data_docs.html"), link
