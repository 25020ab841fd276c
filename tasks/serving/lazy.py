"""An ASGI app built on its first request: what the Airflow plugins mount.

Airflow loads plugins in every component, task processes included, so a plugin must import nothing
heavy. :class:`LazyApp` names its app factory by a dotted path and imports and calls it (with Airflow's
login and a permission check as route dependencies) only when the first request arrives, in the API
server only. Only the standard library is imported here.
"""

from __future__ import annotations

import asyncio
import importlib
from typing import Any, Callable


def airflow_login(resource: str = "homeworth") -> list:
    """The Airflow API server's login (bearer token or the UI's session cookie) and the auth manager's
    permission on the custom view ``resource``, as route dependencies (``tasks.serving.guard.airflow_guard``)."""
    from tasks.serving.guard import airflow_guard

    return airflow_guard(resource)


def resolve(factory: str | Callable[..., Any]) -> Callable[..., Any]:
    """``"package.module:function"`` as the function it names (a callable is returned as it is)."""
    if callable(factory):
        return factory
    module, _, name = factory.partition(":")
    return getattr(importlib.import_module(module), name)


class LazyApp:
    """An ASGI app that calls ``factory(dependencies=airflow_login(resource))`` on its first request.

    ``factory`` is a dotted path ``"package.module:function"`` (imported then) or a callable.
    """

    def __init__(self, factory: str | Callable[..., Any], resource: str = "homeworth") -> None:
        self.factory, self.resource = factory, resource
        self._app = None
        self._lock: asyncio.Lock | None = None

    def _build(self):
        return resolve(self.factory)(dependencies=airflow_login(self.resource))

    async def __call__(self, scope, receive, send) -> None:
        if self._app is None:
            self._lock = self._lock or asyncio.Lock()
            async with self._lock:
                if self._app is None:
                    self._app = await asyncio.to_thread(self._build)
        await self._app(scope, receive, send)
