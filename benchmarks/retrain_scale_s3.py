"""The object-store mode of ``benchmarks/retrain_scale.py`` (``--s3``): the lake on moto's S3 server.

:func:`s3_world` starts moto's standalone server and an ``mlflow server`` (SQLite backend store in the run's
folder, artifacts on ``s3://mlflow/artifacts``) with ``tools/servers.py``; :func:`copy_lake` copies the
validated lake into the bucket (timed apart: not part of the retrain); :func:`airflow_env` is what points the
embedded Airflow's tasks at them (``HOMEWORTH_LAKE_URI=s3://lake/lake``, reports and landing on ``s3://``,
``AWS_ENDPOINT_URL``, a private ``TMPDIR``); :func:`measure` reads the servers' peak memory, the objects left
on the store and the files written locally since the start (none of the lake or of the artifacts may be:
``*.parquet`` and ``*.safetensors`` below the run's folder, its ``TMPDIR`` and the source lake).
:func:`markdown` and :func:`comparison` render the report's S3 section and the side-by-side table.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from tools import servers

BUCKETS = ("landing", "lake", "mlflow")
LAKE_URI, REPORTS_URI, LANDING_URI = "s3://lake/lake", "s3://lake/reports", "s3://landing/feed"
ARTIFACTS_URI = "s3://mlflow/artifacts"
COPIED_TABLES = ("validated", "quarantine")  # what a day's manifest publishes; the retrain reads validated only
DAY_MANIFEST = "_manifest.json"
LEGACY_PART = "part-0.parquet"
LOCAL_SUFFIXES = (".parquet", ".safetensors")  # a lake table or a model's weights on the local disk


@contextmanager
def s3_world(root: Path) -> Iterator[dict]:
    """moto's S3 server and an ``mlflow server`` below ``root`` (``tools/servers.py``, the start-up code the
    integration tests use too: logs, the MLflow database), the buckets made; both stopped on exit.
    Yields endpoint, mlflow_uri, client and the server processes (moto, mlflow)."""
    (root / "mlflow-tmp").mkdir(parents=True, exist_ok=True)
    with servers.s3_and_mlflow(root, BUCKETS, mlflow_env={"TMPDIR": str(root / "mlflow-tmp")}) as srv:
        moto, mlflow = srv["procs"]
        yield {"endpoint": srv["endpoint"], "mlflow_uri": srv["mlflow_uri"], "client": srv["s3"],
               "procs": {"moto": moto, "mlflow": mlflow}, "aws_env": srv["env"]}


def airflow_env(world: dict, tmpdir: Path) -> dict[str, str]:
    """The variables that put the retrain's lake, reports, landing zone and MLflow on the servers (added to
    the Airflow environment, whose inherited ``AWS_*`` / ``MLFLOW_*`` are dropped first)."""
    tmpdir.mkdir(parents=True, exist_ok=True)
    return {**world["aws_env"], "TMPDIR": str(tmpdir),
            "HOMEWORTH_LAKE_URI": LAKE_URI, "HOMEWORTH_REPORTS_URI": REPORTS_URI, "HOMEWORTH_LANDING_URI": LANDING_URI}


def _recorded_root(manifest: dict) -> str | None:
    """The lake root the day's manifest was written under (its validated file's URI up to ``/validated/``)."""
    uri = (manifest.get("validated") or {}).get("uri") or ""
    root, sep, _ = uri.rpartition("/validated/")
    return root if sep else None


def _rebase(x, old: str, new: str):
    """``x`` (a manifest) with every string under ``old/`` moved under ``new/``."""
    if isinstance(x, dict):
        return {k: _rebase(v, old, new) for k, v in x.items()}
    if isinstance(x, list):
        return [_rebase(v, old, new) for v in x]
    if isinstance(x, str) and x.startswith(old + "/"):
        return new + x[len(old):]
    return x


def copy_plan(src: Path, dest_uri: str) -> list[tuple[Path | bytes, str]]:
    """What :func:`copy_lake` uploads: (local file or bytes, key) for the tables a day's manifest publishes
    (``validated``, ``quarantine``). Hidden files (hash sidecars, temporary files) stay behind; so does a
    day's ``part-0.parquet`` when the day has a manifest (the legacy link; readers go through the manifest).
    Manifests are rewritten so that their URIs name the copies (``raw`` and Data Docs references then name
    objects that are not copied: the retrain reads neither)."""
    _, prefix = dest_uri.split("://", 1)[1].split("/", 1)
    out: list[tuple[Path | bytes, str]] = []
    for table in COPIED_TABLES:
        for day_dir in sorted((src / table).glob("ds=*")):
            published = (src / "validated" / day_dir.name / DAY_MANIFEST).is_file()
            for f in sorted(day_dir.iterdir()):
                if f.name.startswith(".") or not f.is_file() or (published and f.name == LEGACY_PART):
                    continue
                key = f"{prefix}/{table}/{day_dir.name}/{f.name}"
                if f.name == DAY_MANIFEST:
                    manifest = json.loads(f.read_text())
                    old = _recorded_root(manifest)
                    body = _rebase(manifest, old, dest_uri.rstrip("/")) if old else manifest
                    out.append((json.dumps(body).encode(), key))
                else:
                    out.append((f, key))
    # a day's manifest last, after the files it names (the order a validation publishes in)
    return sorted(out, key=lambda item: item[1].endswith(DAY_MANIFEST))


def copy_lake(src: Path, client, dest_uri: str = LAKE_URI, workers: int = 4) -> dict:
    """Upload :func:`copy_plan` with ``workers`` threads; objects, bytes and seconds."""
    bucket = dest_uri.split("://", 1)[1].split("/", 1)[0]
    plan = copy_plan(src, dest_uri)
    if not any(key.endswith(DAY_MANIFEST) or "/validated/" in key for _, key in plan):
        raise ValueError(f"{src}: no validated partitions to copy")

    def put(item: tuple[Path | bytes, str]) -> int:
        body, key = item
        if isinstance(body, bytes):
            client.put_object(Bucket=bucket, Key=key, Body=body)
            return len(body)
        client.upload_file(str(body), bucket, key)
        return body.stat().st_size

    files = [i for i in plan if not i[1].endswith(DAY_MANIFEST)]
    manifests = [i for i in plan if i[1].endswith(DAY_MANIFEST)]
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        size = sum(pool.map(put, files))
        size += sum(pool.map(put, manifests))
    return {"source": str(src), "dest": dest_uri, "objects": len(plan), "bytes": size,
            "seconds": round(time.monotonic() - t0, 2), "tables": list(COPIED_TABLES)}


def store_summary(client, buckets: tuple[str, ...] = BUCKETS) -> dict:
    """Objects and bytes per bucket and top-level folder, and any temporary key left (``.tmp-``)."""
    out: dict = {"buckets": {}, "temporary_keys": []}
    for bucket in buckets:
        folders: dict[str, dict] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for o in page.get("Contents", []):
                parts = o["Key"].split("/")
                top = "/".join(parts[:2]) if len(parts) > 2 else parts[0]
                f = folders.setdefault(top, {"objects": 0, "bytes": 0})
                f["objects"] += 1
                f["bytes"] += o["Size"]
                if ".tmp-" in o["Key"]:
                    out["temporary_keys"].append(f"s3://{bucket}/{o['Key']}")
        out["buckets"][bucket] = folders
    return out


def _status_kib(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def group_pids(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` (Linux ``/proc``; each server runs in a group of its own)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:  # after "pid (comm)": state, ppid, pgrp
                out.append(int(entry))
    return sorted(out)


def group_peak_rss_mib(pgid: int) -> dict:
    """Each process's peak resident set (``VmHWM``) in a server's process group: the largest, and the sum (an
    upper bound of the group's peak: the peaks need not coincide). Read before the server is stopped."""
    peaks = [kib for pid in group_pids(pgid) if (kib := _status_kib(pid, "VmHWM")) is not None]
    return {"processes": len(peaks), "max_mib": round(max(peaks, default=0) / 1024, 1),
            "sum_mib": round(sum(peaks) / 1024, 1)}


def deleted_open_bytes(pgid: int) -> int:
    """Bytes of the unlinked files the group's processes hold open: where moto keeps what it spooled to disk."""
    total = 0
    for pid in group_pids(pgid):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}").endswith(" (deleted)"):
                    total += os.stat(f"/proc/{pid}/fd/{fd}").st_size
            except OSError:
                continue
    return total


def local_files(roots: list[Path], since: float, suffixes: tuple[str, ...] = LOCAL_SUFFIXES) -> list[str]:
    """Files below ``roots`` with one of ``suffixes`` modified at or after ``since`` (a ``time.time()``)."""
    out = []
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for n in names:
                p = os.path.join(dirpath, n)
                if n.endswith(suffixes) and os.path.exists(p) and os.path.getmtime(p) >= since:
                    out.append(p)
    return out


def measure(world: dict, roots: list[Path], since: float) -> dict:
    """The servers' peak memory (moto's also the bytes it spooled to disk), what is on the store, and the lake
    or artifact files written below ``roots`` since ``since``: read while the servers still run."""
    moto, mlflow = world["procs"]["moto"], world["procs"]["mlflow"]
    return {"moto_peak_rss": group_peak_rss_mib(moto.pid),
            "moto_spooled_mib": round(deleted_open_bytes(moto.pid) / 2**20, 1),
            "mlflow_peak_rss": group_peak_rss_mib(mlflow.pid),
            "store": store_summary(world["client"]),
            "local_files": local_files(roots, since), "checked_roots": [str(r) for r in roots]}


def _mib(b: int) -> str:
    return f"{b / 2**20:,.1f} MiB"


def markdown(s3: dict) -> list[str]:
    """The report's object-store section."""
    c, m = s3["copy"], s3["measure"]
    store = m["store"]["buckets"]
    lines = ["", "## Object store", "",
             f"The lake was copied before the run ({c['objects']:,} objects of {', '.join(c['tables'])}, "
             f"{_mib(c['bytes'])}) to `{c['dest']}` in {c['seconds']:.1f} s: not part of the times above.", "",
             "| server | peak RSS (MiB), largest process | sum over its processes |", "|---|---:|---:|",
             f"| moto (`tools/moto_ranged.py`) | {m['moto_peak_rss']['max_mib']:,.0f} | "
             f"{m['moto_peak_rss']['sum_mib']:,.0f} |",
             f"| `mlflow server` | {m['mlflow_peak_rss']['max_mib']:,.0f} | {m['mlflow_peak_rss']['sum_mib']:,.0f} |",
             "", f"moto keeps each object in a spooled temporary file: in memory up to ~5 MiB, then in an unlinked "
             f"file of its `TMPDIR` ({m['moto_spooled_mib']:,.1f} MiB of them held at the end).", "",
             "| on the store | objects | size |", "|---|---:|---:|"]
    for bucket, folders in store.items():
        for top, f in sorted(folders.items()):
            lines.append(f"| `s3://{bucket}/{top}` | {f['objects']:,} | {_mib(f['bytes'])} |")
    left = m["local_files"]
    lines += ["", f"Temporary keys left on the store: {len(m['store']['temporary_keys'])}. "
                  f"Lake or artifact files (`*.parquet`, `*.safetensors`) written to the local disk during the run "
                  f"(below {', '.join(f'`{r}`' for r in m['checked_roots'])}): "
                  + ("**none**." if not left else f"**{len(left)}**: " + ", ".join(f"`{p}`" for p in left[:10]))]
    return lines


def comparison(local: dict, s3: dict, local_path: str) -> list[str]:
    """Side by side: each task's duration and peak RSS with the lake on local disk and on S3."""
    lt, st = local.get("tasks", {}), s3.get("tasks", {})

    def cell(t: dict, k: str, fmt: str) -> str:
        v = (t or {}).get(k)
        return "-" if v is None else fmt.format(v)

    md_name = Path(local_path).with_suffix(".md").name
    lines = ["", f"## Beside the local-disk run ([{md_name}]({md_name}))",
             "", "| task | local (s) | S3 (s) | S3 / local | local peak RSS (MiB) | S3 peak RSS (MiB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in dict.fromkeys([*lt, *st]):
        a, b = lt.get(name) or {}, st.get(name) or {}
        ratio = (f"{b['duration_s'] / a['duration_s']:.2f}" if a.get("duration_s") and b.get("duration_s") else "-")
        lines.append(f"| {name} | {cell(a, 'duration_s', '{:,.1f}')} | {cell(b, 'duration_s', '{:,.1f}')} | {ratio} | "
                     f"{cell(a, 'peak_rss_mib', '{:,.0f}')} | {cell(b, 'peak_rss_mib', '{:,.0f}')} |")
    ratio = f"{s3['wall_s'] / local['wall_s']:.2f}" if local.get("wall_s") else "-"
    lines.append(f"| whole run (Airflow start to the run's end) | {local.get('wall_s', '-')} | {s3['wall_s']} | "
                 f"{ratio} | - | - |")
    lines += ["", _differences(local, s3)]
    return lines


def _differences(local: dict, s3: dict) -> str:
    """What differs between the two runs besides the store (comps mode, window, rows, model error)."""
    def rows(r: dict) -> dict:
        return (((r.get("tasks") or {}).get("build_features") or {}).get("xcom") or {}).get("rows") or {}

    def rmse(r: dict):
        ev = ((r.get("tasks") or {}).get("evaluate") or {}).get("xcom") or {}
        return ((ev.get("metrics") or {}).get("new") or {}).get("rmse_ln")

    notes = [f"{k}: local {local.get(k)!r}, S3 {s3.get(k)!r}" for k in ("comps", "window_days", "as_of")
             if local.get(k) != s3.get(k)]
    code_a, code_b = ((r.get("code") or {}).get("fingerprint") for r in (local, s3))
    if code_a is None:
        notes.append("the local run did not record its code")
    elif code_a != code_b:
        notes.append(f"code: local {local['code'].get('git')} ({code_a}), S3 {s3['code'].get('git')} ({code_b})")
    if rows(local) != rows(s3):
        notes.append(f"rows: local {rows(local)}, S3 {rows(s3)}")
    if local.get("features_reused"):
        notes.append("the local run reused a feature table built before it (its build_features time is not a build)")
    a, b = rmse(local), rmse(s3)
    tail = f" Test rmse_ln: local {a:.4f}, S3 {b:.4f}." if a and b else ""
    return ("Same inputs and settings." if not notes else "Differences: " + "; ".join(notes) + ".") + tail
