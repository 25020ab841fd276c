"""Hostile input against the predict endpoint (issue 17): auth on every route, body and batch caps, types,
ranges, NaN and infinities, encodings, missing and extra fields, no echo, /health, an MLflow outage, a
tampered champion. The app is the real one (FastAPI TestClient, and a real uvicorn where the body cap
needs real streaming) over a real registered version in a real MLflow store."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time

import pytest

from tests.kc import KC_SPEC_PATH
from tests.support import free_port, private_home

TOKENS = ("s3cret-token-a", "second-token-b")
AUTH = {"Authorization": f"Bearer {TOKENS[0]}"}
MAX_BATCH = 50
ROUTES = [("POST", "/predict"), ("GET", "/model"), ("GET", "/ui/ledger"), ("GET", "/ui/reports"),
          ("GET", "/ui/reports/x"), ("GET", "/ui/report?dag_id=a&run_id=b"), ("GET", "/docs"),
          ("GET", "/openapi.json"), ("GET", "/redoc"), ("GET", "/no-such-route")]


@pytest.fixture(scope="module")
def champ(tmp_path_factory):
    """One registered champion (stand-in weights) and houses to price; the settings' home for the module."""
    from benchmarks.serving import houses_json, register_version, sample_csv, typed_rows
    from tasks.core.settings import Settings
    from tasks.core.spec import load_spec

    home = tmp_path_factory.mktemp("hostile")
    with private_home(home / "state"):
        spec = load_spec(KC_SPEC_PATH)
        settings = Settings()
        rows = typed_rows(spec, sample_csv(spec, home / "fit.csv", every=40))
        version = register_version(settings, spec, rows)
        houses = houses_json(spec, typed_rows(spec, sample_csv(spec, home / "houses.csv", every=97, limit=20)))
        yield settings, spec, version, houses


@pytest.fixture(scope="module")
def client(champ):
    """The app with tokens set (and a small batch cap), as a TestClient."""
    from fastapi.testclient import TestClient

    from tasks.serving.api import create_app

    settings, spec, *_ = champ
    app = create_app(settings.model_copy(update={"api_tokens": ",".join(TOKENS), "serving_max_batch": MAX_BATCH}), spec)
    with TestClient(app) as c:
        yield c


def post(client, body, headers=None, **kw):
    return client.post("/predict", content=body if isinstance(body, bytes) else json.dumps(body).encode(),
                       headers={"content-type": "application/json", **AUTH, **(headers or {})}, **kw)


def house(champ, **changes):
    h = dict(champ[3][0])
    h.update(changes)
    return {k: v for k, v in h.items() if v is not DROP}


DROP = object()


# ------------------------------------------------------------------------------------------ auth


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_a_token(client, method, path):
    r = client.request(method, path, content=b"{}")
    assert r.status_code == 401, (path, r.status_code, r.text[:200])
    assert r.headers["www-authenticate"] == "Bearer" and "token" in r.json()["detail"]


@pytest.mark.parametrize("header", [f"Bearer {TOKENS[0]}x", f"Bearer x{TOKENS[0]}", f"Basic {TOKENS[0]}",
                                    "Bearer ", f"{TOKENS[0]}", f"Bearer {TOKENS[0][:-1]}", "Bearer s3cret-token-a,second-token-b"])
def test_wrong_tokens_are_refused(client, header):
    assert client.get("/model", headers={"Authorization": header}).status_code == 401


@pytest.mark.parametrize("token", TOKENS)
def test_each_token_opens_every_route_including_the_docs(client, champ, token):
    h = {"Authorization": f"bearer {token}"}  # the scheme is case-insensitive
    assert client.get("/model", headers=h).json()["model_version"] == champ[2]
    spec = client.get("/openapi.json", headers=h).json()
    assert "/predict" in spec["paths"] and "/openapi.json" not in spec["paths"]
    assert "swagger" in client.get("/docs", headers=h).text.lower()
    assert "redoc" in client.get("/redoc", headers=h).text.lower()
    assert client.get("/no-such-route", headers=h).status_code == 404


def test_health_is_open_and_says_only_status(client, fresh_settings):
    from fastapi.testclient import TestClient

    from tasks.serving.api import create_app

    r = client.get("/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    empty = TestClient(create_app(fresh_settings.model_copy(update={"api_tokens": TOKENS[0]})))
    r = empty.get("/health")
    assert r.status_code == 503 and r.json() == {"status": "unavailable"}, "no champion: 503, and nothing more"
    assert empty.get("/model").status_code == 401


@pytest.mark.parametrize(("host", "ok"), [("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.8.9.1", True),
                                          ("0.0.0.0", False), ("::", False), ("192.168.1.5", False),
                                          ("example.com", False)])
def test_no_tokens_means_loopback_only(host, ok, fresh_settings):
    from tasks.serving.api import check_exposure

    if ok:
        check_exposure(host, fresh_settings)
    else:
        with pytest.raises(SystemExit, match="HOMEWORTH_API_TOKENS"):
            check_exposure(host, fresh_settings)
        check_exposure(host, fresh_settings.model_copy(update={"api_tokens": "t"}))  # with tokens: allowed


def test_standalone_server_refuses_a_public_address_without_tokens(fresh_settings):
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "HOMEWORTH_API_TOKENS"}
    out = subprocess.run([sys.executable, "-m", "tasks.serving", "--host", "0.0.0.0", "--port", str(free_port())],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "refusing to serve on 0.0.0.0" in out.stderr, out.stderr[-2000:]


# ------------------------------------------------------------------------------------------ sizes


def test_body_over_the_cap_is_413_without_echo(client):
    big = b'{"houses": ["' + b"A" * (2 * 2**20) + b'"]}'
    r = post(client, big)
    assert r.status_code == 413 and len(r.content) < 200 and b"AAAA" not in r.content
    assert "HOMEWORTH_MAX_REQUEST_MB" in r.json()["detail"]


def test_chunked_body_over_the_cap_is_413(client):
    chunks = (b"A" * 65536 for _ in range(40))  # no Content-Length: counted as it streams
    r = client.post("/predict", content=chunks, headers={"content-type": "application/json", **AUTH})
    assert r.status_code == 413 and b"AAAA" not in r.content


def test_unauthenticated_big_body_is_401_not_read(client):
    r = client.post("/predict", content=b"A" * (3 * 2**20), headers={"content-type": "application/json"})
    assert r.status_code == 401


def test_batch_cap_is_checked_before_each_house(client):
    r = post(client, {"houses": [{"x": i} for i in range(MAX_BATCH + 1)]})
    detail = r.json()["detail"]
    assert r.status_code == 422 and len(detail) == 1, "one error for the batch, none per house"
    assert "at most 50" in detail[0]["msg"]


def test_batch_at_the_cap_is_priced(client, champ):
    r = post(client, {"houses": [champ[3][i % len(champ[3])] for i in range(MAX_BATCH)]})
    assert r.status_code == 200 and len(r.json()["predictions"]) == MAX_BATCH


# ------------------------------------------------------------------------------------------ values


def _detail(r) -> dict:
    assert r.status_code == 422, r.text[:500]
    return {tuple(map(str, e["loc"][2:])): e for e in r.json()["detail"]}


@pytest.mark.parametrize(("field", "value", "says"), [
    ("yr_built", 10**19, "less than or equal"), ("yr_built", -(10**19), "greater than or equal"),
    ("bedrooms", 10**300, "less than or equal"), ("bedrooms", 3.5, "fractional"), ("bedrooms", "three", "integer"),
    ("sqft_living", float("nan"), "finite"), ("sqft_living", float("inf"), "finite"),
    ("lat", float("-inf"), "finite"), ("sqft_lot", "NaN", "finite"), ("sqft_lot", "1e999", "finite"),
    ("grade", float("nan"), "finite"), ("zipcode", float("nan"), "one of"), ("sqft_living", [1, 2], "number"),
    ("sqft_living", {"a": 1}, "number"), ("date", "2015-02-30", "date"), ("date", "yesterday", "date"),
    ("zipcode", "98\u00e9\u0000", "one of"), ("grade", None, "integer"), ("grade", DROP, "required"),
])
def test_bad_values_are_422_naming_the_field(client, champ, field, value, says):
    # json.dumps writes NaN / Infinity, which Python's JSON parser (and so FastAPI's) reads back.
    errs = _detail(post(client, {"houses": [champ[3][1], house(champ, **{field: value})]}))
    assert (("1", field) in errs), errs
    assert says in errs[("1", field)]["msg"].lower(), errs[("1", field)]
    assert not any(k[0] == "0" for k in errs), "the good house has no error"


@pytest.mark.parametrize(("field", "value"), [("sqft_living", 1e308), ("sqft_lot", 1e-308), ("lat", -1e308),
                                              ("yr_built", 2**63 - 1), ("yr_renovated", -(2**63)),
                                              ("bedrooms", 0), ("floors", -0.0)])
def test_extreme_but_typed_values_are_never_a_500(client, champ, field, value):
    r = post(client, {"houses": [house(champ, **{field: value})]})
    assert r.status_code in (200, 422), r.text[:500]
    if r.status_code == 200:
        assert all(p["predicted_price"] > 0 for p in r.json()["predictions"])


@pytest.mark.parametrize("body", [
    b"", b"null", b"[]", b'"houses"', b"{", b'{"houses": {}}', b'{"houses": ["x"]}', b'{"houses": []}',
    b'{"rows": []}', b"\xff\xfe\x00garbage", b"[" * 100_000 + b"]" * 100_000, b'{"houses": [' + b"1" * 5000 + b"]}",
    b'{"houses": [' + b"9" * 4000 + b"]}", b"NaN", b'{"houses": [{}]}',
], ids=lambda b: repr(b[:20]))
def test_malformed_bodies_are_4xx(client, body):
    r = post(client, body)
    assert 400 <= r.status_code < 500 and r.status_code != 413, (r.status_code, r.text[:300])
    assert len(r.content) < 4000


def test_encodings(client, champ):
    body = {"houses": [champ[3][0]]}
    base = post(client, body).json()["predictions"]
    for data in (json.dumps(body).encode("utf-16"), b"\xef\xbb\xbf" + json.dumps(body).encode()):
        r = post(client, data)
        assert r.status_code == 200 and r.json()["predictions"] == base, r.text[:300]
    latin1 = json.dumps(house(champ, zipcode="98\u00e9")).encode("latin-1").replace(b"\\u00e9", b"\xe9")
    assert post(client, b'{"houses": [' + latin1 + b"]}").status_code in (400, 422)
    r = client.post("/predict", content=json.dumps(body), headers={"content-type": "text/plain", **AUTH})
    assert r.status_code == 422 and json.dumps(body)[:30] not in r.text


def test_extra_fields_and_keys_are_refused_without_echo(client, champ):
    huge_key, huge_value = "k" * 100_000, "v" * 500_000
    errs = _detail(post(client, {"houses": [house(champ, **{huge_key: 1}), house(champ, zipcode=huge_value)]}))
    assert any("Extra inputs" in e["msg"] for e in errs.values())
    text = json.dumps(list(errs.values()))
    assert len(text) < 2000 and "k" * 100 not in text and "v" * 100 not in text
    r = post(client, {"houses": [champ[3][0]], "extra": 1})
    assert r.status_code == 422 and "extra" in r.text.lower()


def test_many_bad_houses_give_a_bounded_answer(client):
    r = post(client, {"houses": [{"bedrooms": "x" * 1000, "junk": i} for i in range(MAX_BATCH)]})
    assert r.status_code == 422 and len(r.content) < 30_000
    assert r.json()["detail"][-1]["type"] == "too_many_errors"


def test_good_batch_is_priced(client, champ):
    r = post(client, {"houses": champ[3][:10]})
    assert r.status_code == 200, r.text[:300]
    assert [p["id"] for p in r.json()["predictions"]] == [h["id"] for h in champ[3][:10]]


# ------------------------------------------------------------------------------------------ a real server


@pytest.fixture(scope="module")
def server(client):
    """The same app served by a real uvicorn on a loopback port (for the body cap over real streaming)."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(client.app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    yield port
    srv.should_exit = True
    thread.join(30)


def _upload(port: int, head: bytes, chunks, answer_timeout: float = 10) -> tuple[bytes, int, float]:
    """Send ``head`` then ``chunks`` from a thread; return (the answer, bytes of body sent by then, seconds)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sent = [0]

    def writer():
        try:
            sock.sendall(head)
            for c in chunks:
                sock.sendall(c)
                sent[0] += len(c)
        except OSError:
            pass  # the server answered and closed: what we expect

    t0 = time.perf_counter()
    threading.Thread(target=writer, daemon=True).start()
    sock.settimeout(answer_timeout)
    answer = b""
    try:
        while b"\r\n\r\n" not in answer:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
        elapsed, at = time.perf_counter() - t0, sent[0]
        head_end = answer.index(b"\r\n\r\n") + 4
        length = next(int(line.split(b":")[1]) for line in answer[:head_end].lower().split(b"\r\n")
                      if line.startswith(b"content-length:"))
        while len(answer) < head_end + length:
            answer += sock.recv(65536)
    finally:
        sock.close()
    return answer, at, elapsed


def test_20mb_body_is_413_at_once_over_http(server):
    size = 20 * 2**20
    head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKENS[0]}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n").encode()
    answer, sent, elapsed = _upload(server, head, (b"A" * 2**20 for _ in range(20)))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"AAAA" not in answer
    assert sent < size, "answered before the body was sent"


def test_20mb_chunked_body_is_cut_off_while_streaming(server):
    head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKENS[0]}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    chunk = b"10000\r\n" + b"A" * 65536 + b"\r\n"
    answer, sent, elapsed = _upload(server, head, (chunk for _ in range(320)))
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"AAAA" not in answer and sent < 320 * len(chunk)


def test_event_loop_is_free_during_a_big_upload(server):
    """While a client trickles a body, other requests are answered at once (a 404: no registry, no model)."""
    import httpx

    head = (f"POST /predict HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKENS[0]}\r\n"
            "Content-Type: application/json\r\nContent-Length: 900000\r\n\r\n").encode()
    sock = socket.create_connection(("127.0.0.1", server))
    try:
        sock.sendall(head + b"A" * 1000)
        # answered while the upload is pending (httpx's timeout fails the test if the loop were blocked)
        r = httpx.get(f"http://127.0.0.1:{server}/no-such-route", headers=AUTH, timeout=10)
        assert r.status_code == 404
    finally:
        sock.close()


# ------------------------------------------------------------------------------------------ mounted in Airflow


def test_mounted_in_airflow_login_and_permission_are_checked(champ, airflow_db):
    """The plugin's app with Airflow's real (simple) auth manager: no login 401, a user without a role 403,
    a viewer 200 (the permission on the custom view ``homeworth``), on the docs routes too."""
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    from tasks.serving.lazy import LazyApp

    am = create_auth_manager()
    viewer = {"Authorization": f"Bearer {am.generate_jwt(SimpleAuthManagerUser(username='v', role='viewer'))}"}
    nobody = {"Authorization": f"Bearer {am.generate_jwt(SimpleAuthManagerUser(username='n', role=None))}"}
    client = TestClient(LazyApp("tasks.serving.api:create_app"))
    for path in ("/model", "/openapi.json", "/docs", "/ui/ledger"):
        assert client.get(path).status_code == 401, path
        assert client.get(path, headers=nobody).status_code == 403, path
        assert client.get(path, headers=viewer).status_code == 200, path
    assert client.get("/model", headers=AUTH).status_code == 403, "the endpoint's own tokens are not Airflow logins"
    r = client.post("/predict", json={"houses": champ[3][:2]}, headers=viewer)
    assert r.status_code == 200 and r.json()["model_version"] == champ[2]
    assert client.get("/health").json() == {"status": "ok"}
