"""The object-store lake (tasks/core/objectstore.py, tasks/core/storage.py): one S3 configuration for pyarrow,
Polars and boto3, and each table type written and read on a real S3 API (moto's server, in a thread on
127.0.0.1), compared with the same table on the local disk.
"""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from tasks.core import objectstore, storage
from tests.kc import KC_DATA_PATH
from tests.support import free_port

# Every variable objectstore reads or exports: each test starts without them and gets them back after.
AWS_VARS = (*objectstore._ENV_KEYS, "MLFLOW_S3_ENDPOINT_URL", "AWS_ALLOW_HTTP", "HOMEWORTH_AWS_CONN_ID")


@pytest.fixture
def clean_env(monkeypatch):
    from tasks.core.settings import get_settings

    for k in AWS_VARS:
        monkeypatch.delenv(k, raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


@pytest.fixture(scope="module")
def moto_endpoint():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(clean_env, moto_endpoint, request):
    """AWS variables for the moto server and a fresh bucket; returns the bucket's URI."""
    import boto3

    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": moto_endpoint}
    for k, v in env.items():
        clean_env.setenv(k, v)
    bucket = "t-" + request.node.name.lower().replace("_", "-")[:50]
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


def test_the_environment_configures_every_client(clean_env):
    env = {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_REGION": "eu-west-1",
           "AWS_ENDPOINT_URL": "http://general:1", "AWS_ENDPOINT_URL_S3": "http://s3only:9000"}
    cfg = objectstore.from_environ(env)
    assert cfg.endpoint_url == "http://s3only:9000", "the S3-specific endpoint wins over the general one"
    assert cfg.polars_options() == {"aws_access_key_id": "AK", "aws_secret_access_key": "SK", "aws_region": "eu-west-1",
                                    "aws_endpoint_url": "http://s3only:9000", "aws_allow_http": "true"}
    assert cfg.boto3_kwargs() == {"aws_access_key_id": "AK", "aws_secret_access_key": "SK", "region_name": "eu-west-1",
                                  "endpoint_url": "http://s3only:9000"}
    exported = cfg.env()
    assert exported["MLFLOW_S3_ENDPOINT_URL"] == exported["AWS_ENDPOINT_URL"] == "http://s3only:9000"
    assert "SK" not in cfg.describe() and "AK" not in cfg.describe()
    assert objectstore.from_environ({}).polars_options() == {}, "nothing set: each client's own chain"


def test_the_s3_request_timeout_is_set_and_checked(clean_env):
    """pyarrow's request timeout (the SDK's 3 s low-speed abort by default) is 60 s, or the setting's."""
    fs = objectstore._filesystem(objectstore.S3Config(endpoint_url="http://127.0.0.1:9"))
    assert fs.__reduce__()[1][0]["request_timeout"] == 60.0
    assert objectstore.request_timeout_s({"HOMEWORTH_S3_REQUEST_TIMEOUT_S": "7.5"}) == 7.5
    for bad in ("0", "-1", "soon"):
        with pytest.raises(ValueError, match="HOMEWORTH_S3_REQUEST_TIMEOUT_S"):
            objectstore.request_timeout_s({"HOMEWORTH_S3_REQUEST_TIMEOUT_S": bad})


def test_an_airflow_connection_configures_every_client(clean_env):
    from tasks.core.settings import get_settings

    conn = {"conn_type": "aws", "login": "CONNKEY", "password": "CONNSECRET",
            "extra": {"region_name": "eu-central-1", "endpoint_url": "http://minio.internal:9000"}}
    clean_env.setenv("AIRFLOW_CONN_HW_LAKE", json.dumps(conn))
    clean_env.setenv("HOMEWORTH_AWS_CONN_ID", "hw_lake")
    clean_env.setenv("AWS_ENDPOINT_URL", "http://ignored:1")
    get_settings.cache_clear()
    cfg = objectstore.configure()
    assert (cfg.access_key_id, cfg.region, cfg.endpoint_url) == ("CONNKEY", "eu-central-1", "http://minio.internal:9000")
    assert "hw_lake" in cfg.describe()
    import os

    # exported for the clients configured by the environment (Polars without options, MLflow's boto3)
    assert os.environ["AWS_ACCESS_KEY_ID"] == "CONNKEY" and os.environ["MLFLOW_S3_ENDPOINT_URL"] == "http://minio.internal:9000"
    assert os.environ["AWS_ENDPOINT_URL"] == "http://minio.internal:9000"


def test_a_missing_connection_is_named(clean_env):
    from tasks.core.settings import get_settings

    clean_env.setenv("HOMEWORTH_AWS_CONN_ID", "no_such_conn_h8")
    get_settings.cache_clear()
    objectstore._connection_config.cache_clear()
    with pytest.raises(ValueError, match="no_such_conn_h8"):
        objectstore.s3_config()


def test_files_and_atomic_writes_on_the_object_store(s3):
    uri = storage.join(s3, "lake", "raw", "ds=2015-01-02", "part-0.parquet")
    df = pl.DataFrame({"id": ["a", "b"], "price": [1.0, 2.0]})
    sha = storage.write_parquet_atomic(df, uri, record_sha256=True)
    assert storage.exists(uri) and storage.file_sha256(uri) == sha == storage.cached_file_sha256(uri)
    assert storage.list_dir(storage.join(s3, "lake", "raw")) == ["ds=2015-01-02"]
    assert storage.list_dir(storage.join(s3, "lake", "raw", "ds=2015-01-02"), hidden=True) == ["part-0.parquet"], \
        "the temporary key is gone once published"
    assert_frame_equal(pl.read_parquet(uri), df)  # Polars without options: the environment's configuration
    assert storage.local_path(uri) is None and not storage.is_symlink(uri)
    link = storage.join(s3, "lake", "raw", "ds=2015-01-02", "part-1.parquet")
    storage.link_atomic(uri, link)  # object stores have no links: a server-side copy
    assert storage.read_bytes(link) == storage.read_bytes(uri)
    storage.remove(link)
    # a second writer's temporary key, left by a killed writer, is swept by age
    tmp = storage.temp_path(uri)
    storage.write_bytes_atomic(tmp + "x", b"other")  # a visible neighbour that is not garbage
    fs, path = storage.resolve(tmp)
    with fs.open_output_stream(path) as f:
        f.write(b"partial")
    assert storage.sweep_stale_temp(storage.join(s3, "lake"), older_than_s=3600) == []
    assert storage.sweep_stale_temp(storage.join(s3, "lake"), older_than_s=-1) == [path]


def test_publish_once_never_replaces_a_published_object(s3):
    target = storage.join(s3, "features", "part-0.parquet")
    first, second = storage.temp_path(target), storage.temp_path(target)
    storage.write_bytes_atomic(first, b"first")
    storage.write_bytes_atomic(second, b"second")
    assert storage.publish_once_uri(first, target) is True
    assert storage.publish_once_uri(second, target) is False
    assert storage.read_bytes(target) == b"first"
    assert not storage.exists(first) and not storage.exists(second), "both temporary keys are deleted"


def _validated_lake(lake_uri: str, spec, every: int = 32, since: date = date(2014, 10, 1)) -> None:
    """Every ``every``-th bundled sale from ``since`` on, as validated day partitions (small: a write is 3 requests)."""
    from tasks.core import lake as lake_paths
    from tasks.ingest.landing import DS, POLARS_TYPES

    raw = pl.read_csv(KC_DATA_PATH, infer_schema=False).gather_every(every)
    df = raw.select([
        (pl.col(c).str.strptime(pl.Date, cs.format) if cs.type == "date" else pl.col(c).cast(POLARS_TYPES[cs.type]))
        .alias(c) for c, cs in spec.columns.items()
    ]).with_columns(pl.col("date").alias(DS)).filter(pl.col(DS) >= since)
    for (day,), part in df.group_by(DS):
        storage.write_parquet_atomic(part, lake_paths.partition_uri(lake_uri, "validated", day))


# e2e tier: about 50 s each on 2 cores (plan_window probes every day of the window and its history on the store)
@pytest.mark.e2e
@pytest.mark.parametrize("comps_mode", ["full", "area"])  # chunked ParquetWriter / one streaming sink
def test_feature_table_on_the_object_store_equals_the_local_one(s3, tmp_path, spec, comps_mode):
    from tasks.features.build import build_features
    from tasks.features.preprocessing import load_preprocessing

    window = (date(2014, 11, 1), date(2015, 5, 28))
    local_lake, s3_lake = str(tmp_path / "lake"), storage.join(s3, "lake")
    for root in (local_lake, s3_lake):
        _validated_lake(root, spec)
    local = build_features(spec, local_lake, *window, comps_mode=comps_mode)
    remote = build_features(spec, s3_lake, *window, comps_mode=comps_mode)
    assert remote["features_uri"].startswith(s3_lake + "/features/")
    assert remote["features_sha256"] == storage.file_sha256(remote["features_uri"])
    assert_frame_equal(pl.read_parquet(remote["features_uri"]), pl.read_parquet(local["features_uri"]))
    assert remote["features_sha256"] == local["features_sha256"]
    assert load_preprocessing(remote["preprocessing_uri"]).sha256() == load_preprocessing(local["preprocessing_uri"]).sha256()
    folder = remote["features_uri"].rsplit("/", 1)[0]
    assert storage.list_dir(folder, hidden=True) == ["manifest.json", "part-0.parquet"], "no temporary key is left"
    again = build_features(spec, s3_lake, *window, comps_mode=comps_mode)
    assert again == remote, "a finished table is reused"
    assert not list(tmp_path.glob("**/.*tmp-*"))


def test_a_failed_feature_write_leaves_no_key(s3):
    from tasks.features.write import prepare_output, write_chunks

    target, tmp = prepare_output(storage.join(s3, "features", "w", "part-0.parquet"))
    assert target.startswith("s3://") and tmp.startswith("s3://")

    def frame(chunk):
        if chunk[0] == 2:
            raise RuntimeError("boom in chunk 2")
        return pl.LazyFrame({"a": [1.0], "split": ["train"]})

    with pytest.raises(RuntimeError, match="boom"):
        write_chunks([[1], [2]], frame, tmp)
    assert storage.list_dir(storage.join(s3, "features", "w"), hidden=True) == []


def test_the_training_loader_streams_from_the_object_store(s3, tmp_path):
    from tasks.model.data import ParquetBatches, iter_split, sample_split, split_counts
    from tests.unit.test_outofcore import PREP

    rng = np.random.default_rng(3)
    n = 1_500
    df = pl.DataFrame({"row": np.arange(n, dtype=float), "x0": rng.normal(size=n), "x1": rng.normal(size=n),
                       "x2": rng.normal(size=n), "zone": rng.choice(["a", "b", "c"], size=n),
                       "price": np.exp(12 + rng.normal(scale=0.3, size=n)),
                       "split": np.where(np.arange(n) % 5 == 0, "val", "train")})
    local, remote = str(tmp_path / "part-0.parquet"), storage.join(s3, "f", "part-0.parquet")
    df.write_parquet(local, row_group_size=200)
    fs, path = storage.resolve(remote)
    with fs.open_output_stream(path) as f:
        df.write_parquet(f, row_group_size=200)
    assert split_counts(remote) == split_counts(local) == {"train": 1200, "val": 300, "test": 0}
    for a, b in zip(ParquetBatches(remote, PREP, "train", 64, True, seed=2, buffer_rows=300),
                    ParquetBatches(local, PREP, "train", 64, True, seed=2, buffer_rows=300)):
        for x, y in zip(a, b):
            assert (x == y).all()
    assert_frame_equal(pl.concat(iter_split(remote, "val", batch_rows=100)), pl.concat(iter_split(local, "val", batch_rows=100)))
    assert_frame_equal(sample_split(remote, "train", 100), sample_split(local, "train", 100))
