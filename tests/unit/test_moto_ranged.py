"""tools/moto_ranged.py: moto's S3 server whose ranged GETs read only their range answers every read exactly as
moto does (the bytes, the status, Content-Range), and a Parquet file reads back the same through pyarrow."""

from __future__ import annotations

import os
import sys

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from tools.servers import CREDS, MOTO_RANGED, clean_env, free_port, s3_client, serve, stop


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    root = tmp_path_factory.mktemp("moto")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = serve([sys.executable, str(MOTO_RANGED), "-H", "127.0.0.1", "-p", str(port)], root / "moto.log",
                 clean_env(), f"{endpoint}/moto-api/", timeout=60)
    try:
        client = s3_client(endpoint)
        client.create_bucket(Bucket="bkt")
        yield client, endpoint
    finally:
        stop(proc)


def test_ranges_read_the_same_bytes_as_slices(s3):
    client, _ = s3
    body = os.urandom(3 * 1024 * 1024 + 17)  # above moto's in-memory buffer, so the key spills to a file
    client.put_object(Bucket="bkt", Key="k", Body=body)
    n = len(body)
    for spec, (start, stop_) in {"bytes=0-0": (0, 1), "bytes=5-99": (5, 100), f"bytes={n - 10}-": (n - 10, n),
                                 "bytes=-7": (n - 7, n), f"bytes=100-{n + 500}": (100, n),
                                 "bytes=1048576-2097151": (1048576, 2097152)}.items():
        got = client.get_object(Bucket="bkt", Key="k", Range=spec)
        assert got["Body"].read() == body[start:stop_], spec
        assert got["ResponseMetadata"]["HTTPStatusCode"] == 206, spec
        assert got["ContentRange"] == f"bytes {start}-{stop_ - 1}/{n}", spec
    assert client.get_object(Bucket="bkt", Key="k")["Body"].read() == body  # no range: moto's own path
    with pytest.raises(client.exceptions.ClientError, match="InvalidRange"):
        client.get_object(Bucket="bkt", Key="k", Range=f"bytes={n + 1}-")
    assert client.head_object(Bucket="bkt", Key="k")["ContentLength"] == n


def test_parquet_round_trip_through_pyarrow(s3):
    _, endpoint = s3
    fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", access_key=CREDS["AWS_ACCESS_KEY_ID"],
                           secret_key=CREDS["AWS_SECRET_ACCESS_KEY"], region=CREDS["AWS_DEFAULT_REGION"])
    table = pa.table({"a": list(range(200_000)), "b": [float(i) / 3 for i in range(200_000)]})
    pq.write_table(table, "bkt/t.parquet", filesystem=fs, row_group_size=10_000)
    assert pq.read_table("bkt/t.parquet", filesystem=fs).equals(table)
    assert pq.read_table("bkt/t.parquet", filesystem=fs, columns=["b"]).column("b").equals(table.column("b"))


def test_the_window_reads_only_its_range():
    import io
    import threading

    from tools.moto_ranged import _Window

    class Buffer(io.BytesIO):
        reads: list[int] = []

        def read(self, size=-1):
            self.reads.append(size)
            return super().read(size)

    class Key:
        lock, size, _value_buffer = threading.Lock(), 1000, Buffer(bytes(range(250)) * 4)

    window = _Window(Key())
    assert len(window) == 1000 and window
    assert window[10:20] == (bytes(range(250)) * 4)[10:20]
    assert window[990:2000] == (bytes(range(250)) * 4)[990:]
    assert Buffer.reads == [10, 10]  # never the whole object
