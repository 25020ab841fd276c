"""The one HTML page helper: a self-contained page (inline CSS, no scripts, no network).

Data Docs (``tasks.quality.datadocs``), the serving pages (``tasks.serving.pages``) and the Data Docs
index of the Airflow plugin all wrap their body with :func:`page`. Only the standard library is imported.
"""

from __future__ import annotations

import html
from typing import Any


def esc(value: Any) -> str:
    """``value`` as HTML text; None is the empty string."""
    return html.escape("" if value is None else str(value))


def page(title: str, body_html: str, *, css: str = "", heading: bool = False) -> str:
    """A whole HTML document: ``title`` (escaped) in ``<title>`` and, with ``heading``, as the ``<h1>``;
    ``css`` inline in ``<style>``; ``body_html`` as it is (the caller escapes what it puts there)."""
    style = f"<style>{css}</style>" if css else ""
    h1 = f"<h1>{esc(title)}</h1>" if heading else ""
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
            f"{style}</head><body>\n{h1}{body_html}\n</body></html>\n")
