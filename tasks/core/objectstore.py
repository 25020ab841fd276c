"""One S3 configuration for every client of an object-store lake (docs/production.md, "Object-store lake").

Where it comes from (:func:`s3_config`), in this order:

- an Airflow connection, when ``HOMEWORTH_AWS_CONN_ID`` names one (the Amazon provider's conventions:
  login = access key id, password = secret access key; extra ``region_name``, ``endpoint_url`` (or
  ``service_config.s3.endpoint_url``), ``aws_session_token``). The connection is looked up through the
  Airflow task SDK (a task's connection, or ``AIRFLOW_CONN_<ID>`` / a secrets backend outside a task);
- else the standard AWS variables: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
  ``AWS_DEFAULT_REGION`` (or ``AWS_REGION``), ``AWS_ENDPOINT_URL_S3`` (else ``AWS_ENDPOINT_URL``). Unset
  keys are left to each client's own chain (instance profiles, ``~/.aws``).

The same :class:`S3Config` makes pyarrow's ``S3FileSystem`` (:meth:`S3Config.filesystem`, what
``tasks.core.storage`` resolves ``s3://`` URIs with), Polars' ``storage_options``
(:meth:`S3Config.polars_options`, :func:`storage_options`) and boto3's client arguments
(:meth:`S3Config.boto3_kwargs`). Code that reads the lake with Polars without passing options, and MLflow's
boto3 (artifacts; it reads ``MLFLOW_S3_ENDPOINT_URL``), take it from the environment: :func:`configure`
exports the configuration there (:meth:`S3Config.env`) once per process, so a connection's credentials
reach them too. Nothing here is secret-logging: :meth:`S3Config.describe` names the source and the
endpoint, never a key.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pyarrow.fs as pafs

log = logging.getLogger(__name__)

SCHEMES = ("s3://", "s3a://")
_ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION",
             "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")
_lock = threading.Lock()
_exported: tuple | None = None


def is_s3(uri: str) -> bool:
    return uri.startswith(SCHEMES)


def bucket_key(uri: str) -> tuple[str, str]:
    """(bucket, key) of an ``s3://bucket/key`` URI."""
    rest = uri.split("://", 1)[1]
    bucket, _, key = rest.partition("/")
    return bucket, key


@dataclass(frozen=True)
class S3Config:
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    region: str | None = None
    endpoint_url: str | None = None
    source: str = "environment"

    def describe(self) -> str:
        """Where the configuration came from and its endpoint; never a credential."""
        return f"S3 from {self.source} (endpoint {self.endpoint_url or 'AWS'}, region {self.region or 'default'})"

    def filesystem(self) -> pafs.S3FileSystem:
        """pyarrow's S3 file system for this configuration (paths inside it are ``bucket/key``)."""
        return _filesystem(self)

    def polars_options(self) -> dict[str, str]:
        """Polars' ``storage_options`` (object_store's keys) for ``scan_parquet`` / ``sink_parquet`` / ``write_parquet``."""
        opts = {"aws_access_key_id": self.access_key_id, "aws_secret_access_key": self.secret_access_key,
                "aws_session_token": self.session_token, "aws_region": self.region,
                "aws_endpoint_url": self.endpoint_url}
        out = {k: v for k, v in opts.items() if v}
        if self.endpoint_url and self.endpoint_url.startswith("http://"):
            out["aws_allow_http"] = "true"
        return out

    def boto3_kwargs(self) -> dict[str, str]:
        """Keyword arguments of ``boto3.client("s3", **...)``."""
        opts = {"aws_access_key_id": self.access_key_id, "aws_secret_access_key": self.secret_access_key,
                "aws_session_token": self.session_token, "region_name": self.region,
                "endpoint_url": self.endpoint_url}
        return {k: v for k, v in opts.items() if v}

    def env(self) -> dict[str, str]:
        """The standard variables for clients configured by the environment (Polars without options, boto3,
        MLflow: ``MLFLOW_S3_ENDPOINT_URL``)."""
        env = {"AWS_ACCESS_KEY_ID": self.access_key_id, "AWS_SECRET_ACCESS_KEY": self.secret_access_key,
               "AWS_SESSION_TOKEN": self.session_token, "AWS_DEFAULT_REGION": self.region,
               "AWS_REGION": self.region, "AWS_ENDPOINT_URL": self.endpoint_url,
               "AWS_ENDPOINT_URL_S3": self.endpoint_url, "MLFLOW_S3_ENDPOINT_URL": self.endpoint_url}
        if self.endpoint_url and self.endpoint_url.startswith("http://"):
            env["AWS_ALLOW_HTTP"] = "true"
        return {k: v for k, v in env.items() if v}


@lru_cache(maxsize=8)
def _filesystem(cfg: S3Config) -> pafs.S3FileSystem:
    kw: dict[str, Any] = {}
    if cfg.access_key_id and cfg.secret_access_key:
        kw.update(access_key=cfg.access_key_id, secret_key=cfg.secret_access_key)
        if cfg.session_token:
            kw["session_token"] = cfg.session_token
    if cfg.region:
        kw["region"] = cfg.region
    if cfg.endpoint_url:
        scheme, _, host = cfg.endpoint_url.partition("://")
        kw.update(endpoint_override=host.rstrip("/") if host else cfg.endpoint_url, scheme=scheme if host else "https")
    # The AWS SDK aborts a transfer slower than 1 byte/s for request_timeout (3 s by default, with curl on Linux
    # too): a store serving a large object's ranged read under load (moto reads the whole object first) stalls
    # that long and the read fails. HOMEWORTH_S3_REQUEST_TIMEOUT_S sets it (default 60 s).
    kw["request_timeout"] = request_timeout_s()
    return pafs.S3FileSystem(**kw)


def request_timeout_s(environ: dict[str, str] | os._Environ | None = None) -> float:
    """pyarrow's S3 request timeout: ``HOMEWORTH_S3_REQUEST_TIMEOUT_S`` (seconds, > 0), default 60."""
    raw = (os.environ if environ is None else environ).get("HOMEWORTH_S3_REQUEST_TIMEOUT_S", "60")
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"HOMEWORTH_S3_REQUEST_TIMEOUT_S={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise ValueError(f"HOMEWORTH_S3_REQUEST_TIMEOUT_S={raw!r} must be > 0")
    return value


def from_environ(environ: dict[str, str] | os._Environ | None = None) -> S3Config:
    """The configuration the standard AWS variables give."""
    e = os.environ if environ is None else environ
    return S3Config(e.get("AWS_ACCESS_KEY_ID") or None, e.get("AWS_SECRET_ACCESS_KEY") or None,
                    e.get("AWS_SESSION_TOKEN") or None, e.get("AWS_DEFAULT_REGION") or e.get("AWS_REGION") or None,
                    e.get("AWS_ENDPOINT_URL_S3") or e.get("AWS_ENDPOINT_URL") or None)


def from_connection(conn_id: str) -> S3Config:
    """The configuration of the Airflow connection ``conn_id`` (the Amazon provider's fields, module doc)."""
    from airflow.sdk import Connection

    try:
        conn = Connection.get(conn_id)
    except Exception as exc:  # the SDK raises its own error types for a missing connection
        raise ValueError(f"HOMEWORTH_AWS_CONN_ID={conn_id!r}: the Airflow connection could not be read ({exc})") from exc
    extra = conn.extra_dejson if isinstance(conn.extra_dejson, dict) else json.loads(conn.extra or "{}")
    endpoint = (extra.get("endpoint_url") or (extra.get("service_config") or {}).get("s3", {}).get("endpoint_url")
                or (f"http://{conn.host}:{conn.port}" if conn.host and conn.port else conn.host) or None)
    return S3Config(conn.login or None, conn.password or None, extra.get("aws_session_token") or None,
                    extra.get("region_name") or None, endpoint, source=f"Airflow connection {conn_id!r}")


def _conn_id() -> str:
    from tasks.core.settings import get_settings

    return getattr(get_settings(), "aws_conn_id", "") or ""


def s3_config() -> S3Config:
    """The process's S3 configuration: the connection named by ``HOMEWORTH_AWS_CONN_ID``, else the environment."""
    conn_id = _conn_id()
    return _connection_config(conn_id) if conn_id else from_environ()


@lru_cache(maxsize=4)
def _connection_config(conn_id: str) -> S3Config:
    return from_connection(conn_id)


def configure() -> S3Config:
    """:func:`s3_config`, exported to this process's environment (once per configuration) so that clients
    configured by the environment use the same endpoint and credentials (module doc)."""
    global _exported
    cfg = s3_config()
    key = (cfg, tuple(os.environ.get(k) for k in _ENV_KEYS))
    if _exported != key:
        with _lock:
            os.environ.update(cfg.env())
            _exported = (cfg, tuple(os.environ.get(k) for k in _ENV_KEYS))
            log.info("object store: %s", cfg.describe())
    return cfg


def filesystem() -> pafs.S3FileSystem:
    """pyarrow's S3 file system of the process's configuration (:func:`configure`)."""
    return configure().filesystem()


def storage_options(uri: str) -> dict[str, str] | None:
    """Polars' ``storage_options`` for ``uri``: the configuration's for an ``s3://`` URI, None for a local one."""
    return configure().polars_options() if is_s3(uri) else None


def boto3_client():
    """A boto3 S3 client of the process's configuration."""
    import boto3

    return boto3.client("s3", **configure().boto3_kwargs())
