"""moto's standalone S3 server, with ranged GETs that read only their range.

    python -m tools.moto_ranged -H 127.0.0.1 -p PORT      (the arguments of ``python -m moto.server``)

moto 5.2 answers a ranged GET by copying the whole object out of its buffer (``FakeKey.value``) and slicing
the copy. Readers of Parquet on S3 (pyarrow, Polars) make thousands of ranged reads of one large file: a
footer, then each row group's column chunks. On moto each of them costs the whole object, so a scan of an
860 MB feature table takes time in the square of its size, which is a property of the test server, not of
S3 (issue 18, docs/production.md). This launcher changes one thing before starting moto's own ``main``:
while a GET with a single ``Range: bytes=a-b`` header is answered, ``FakeKey.value`` is a window that reads
only the bytes asked for (``seek`` + ``read`` under the key's lock). Every other request, and every other use
of ``value``, is moto's own code. The test of the equivalence: tests/unit/test_moto_ranged.py.
"""

from __future__ import annotations

import re
import sys
import threading

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_local = threading.local()


class _Window:
    """The bytes of a key, read on slicing: ``len()`` and ``[a:b]`` are all moto's range handler needs."""

    def __init__(self, key) -> None:
        self._key = key

    def __len__(self) -> int:
        return int(self._key.size)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __getitem__(self, item: slice) -> bytes:
        start, stop, _ = item.indices(len(self))
        with self._key.lock:
            buf = self._key._value_buffer
            buf.seek(start)
            return buf.read(max(0, stop - start))

    def whole(self) -> bytes:
        return self[0:len(self)]


def install() -> None:
    """Patch moto's S3 response so that a simple ranged GET reads only its range."""
    from moto.s3 import models, responses

    original_value = models.FakeKey.value
    original_key_response = responses.S3Response.key_response

    def value(self):
        if getattr(_local, "ranged", False):
            return _Window(self)
        return original_value.fget(self)

    def key_response(self, request, full_url, headers):
        ranged = request.method == "GET" and bool(_RANGE.match(request.headers.get("range") or ""))
        _local.ranged = ranged
        try:
            status, response_headers, body = original_key_response(self, request, full_url, headers)
        finally:
            _local.ranged = False
        if isinstance(body, _Window):  # moto fell back to the whole object (a range it treats as none)
            body = body.whole()
        return status, response_headers, body

    models.FakeKey.value = property(value, original_value.fset)
    responses.S3Response.key_response = key_response


def main(argv: list[str] | None = None) -> None:
    install()
    from moto.server import main as moto_main

    moto_main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
