"""What stands in front of the endpoint: bearer tokens, the body cap, Airflow's permission check, guarded docs.

- :class:`Guard` (ASGI middleware, outermost): with tokens set (``HOMEWORTH_API_TOKENS``, comma-separated),
  every path but ``/health`` needs ``Authorization: Bearer <token>`` (compared with
  :func:`hmac.compare_digest` against each token), checked before a byte of the body is read. Then the body
  cap (``HOMEWORTH_MAX_REQUEST_MB``): a ``Content-Length`` over it is answered 413 at once; a body without
  one (chunked) is counted as it streams and answered 413 as soon as it passes the cap. Either way nothing
  is parsed and nothing of the body is echoed.
- :func:`airflow_guard`: in Airflow's API server, the login (a bearer JWT or the UI's cookie) and the
  auth manager's permission on the custom view ``homeworth`` (GET for reads, POST for ``/predict``).
- :func:`docs_routes`: ``/openapi.json``, ``/docs`` and ``/redoc`` behind the same guard as the rest.
"""

# No ``from __future__ import annotations``: FastAPI reads the dependency's ``Request`` annotation live.
import hmac
import json

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse

OPEN_PATHS = frozenset({"/health"})
AIRFLOW_RESOURCE = "homeworth"


def parse_tokens(text: str) -> list[bytes]:
    """The tokens of a comma-separated setting (blanks dropped)."""
    return [t.strip().encode() for t in (text or "").split(",") if t.strip()]


def token_ok(header: bytes | None, tokens: list[bytes]) -> bool:
    """Whether an ``Authorization`` header carries one of ``tokens`` (constant-time comparison, each token)."""
    if not header or not header[:7].lower() == b"bearer ":
        return False
    given = header[7:].strip()
    ok = False
    for t in tokens:
        ok |= hmac.compare_digest(given, t)
    return ok


def route_path(scope) -> str:
    """The path below the app's mount point (``root_path``)."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root):] or "/" if root and path.startswith(root) else path


async def _answer(send, status: int, detail: str, headers: list | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: the bearer-token check (when ``tokens``), then the body cap of ``max_bytes``."""

    def __init__(self, app, tokens: list[bytes], max_bytes: int):
        self.app, self.tokens, self.max_bytes = app, tokens, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.tokens and route_path(scope) not in OPEN_PATHS and not token_ok(headers.get(b"authorization"),
                                                                                 self.tokens):
            await _answer(send, 401, "Not authenticated: send Authorization: Bearer <token>",
                          [(b"www-authenticate", b"Bearer")])
            return
        mb = f"{self.max_bytes / 2**20:g} MiB"
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _answer(send, 413, f"request body over {mb} (HOMEWORTH_MAX_REQUEST_MB)")
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await _answer(send, 413, f"request body over {mb} (HOMEWORTH_MAX_REQUEST_MB)")
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _replay(body: bytes, receive):
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # http.disconnect when the client goes

    return replay


def airflow_guard(resource: str = AIRFLOW_RESOURCE) -> list:
    """Route dependencies for an app mounted in Airflow's API server: its login, then the auth manager's
    permission on the custom view ``resource`` (GET for reads, POST for anything else)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.core_api.security import get_user

    def permitted(request: Request, user=Depends(get_user)) -> None:
        method = "GET" if request.method in ("GET", "HEAD", "OPTIONS") else "POST"
        if not get_auth_manager().is_authorized_custom_view(method=method, resource_name=resource, user=user):
            raise HTTPException(403, f"Forbidden: no {method} permission on {resource!r}")

    return [Depends(permitted)]


def docs_routes(app: FastAPI, dependencies: list) -> APIRouter:
    """``/openapi.json``, ``/docs`` and ``/redoc`` behind ``dependencies`` (the app is built without FastAPI's own)."""
    router = APIRouter(dependencies=dependencies, include_in_schema=False)

    @router.get("/openapi.json")
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @router.get("/docs", response_class=HTMLResponse)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title=f"{app.title} - docs")

    @router.get("/redoc", response_class=HTMLResponse)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_redoc_html(openapi_url=f"{root}/openapi.json", title=f"{app.title} - ReDoc")

    return router
