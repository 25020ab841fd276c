"""One model version per retrain run, whatever the retries (issue 15, item 3).

A ``train`` try killed (SIGKILL, the OOM killer) after registering its model version, or before, leaves its
MLflow run RUNNING; the retry must find it in any state and reuse a complete version, or mark the orphan and
train once more. Real MLflow sqlite stores, tiny frames and one-epoch trainings; the kills are real SIGKILLs
of a child process running ``train_step``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import polars as pl
import pytest

from tasks.core import lake, tracking
from tasks.core.handoffs import FeatureTable, Trial
from tasks.core.lineage import Lineage
from tasks.core.params import RetrainParams
from tasks.features.featureset import SPLIT
from tasks.features.preprocessing import NumericStat, Preprocessing, Vocabulary

REPO = Path(__file__).resolve().parents[2]
ROWS = {"train": 160, "val": 60, "test": 30}
PREP = Preprocessing(
    dataset="synthetic", spec_sha256="0" * 64, features_module=None,
    numeric=[NumericStat(name=f"x{i}", lo=-3.0, hi=3.0, mean=0.0, std=1.0) for i in range(3)],
    categorical=[Vocabulary(name="zone", values=["a", "b", "c"])],
    target="price", target_transform="log", target_mean=12.0, target_std=0.5, fitted_on={},
)
PARAMS = RetrainParams(model_family="mlp", max_epochs=1, use_tuned_config=False, refit_on_val=False)
LINEAGE = Lineage(dag_id="price_model_retrain", run_id="manual__retry", window_start="2015-01-01",
                  window_end="2015-04-01")

# A child process runs train_step and SIGKILLs itself (no finally, no set_terminated, as an out-of-memory kill
# would leave it) as training starts, or just before or just after create_model_version. Lightning's MLflow
# logger ends the run FINISHED when fit returns, so the last two leave it FINISHED without its model_version tag.
KILLED_TRY = """
import os, signal, sys
from mlflow import MlflowClient
import tasks.model.train
from tasks.core.handoffs import FeatureTable
from tasks.core.lineage import Lineage
from tasks.core.params import RetrainParams
from tasks.core.settings import get_settings
from tasks.model.retrain import train_step

point, register = sys.argv[1], MlflowClient.create_model_version
def kill(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
def killed(self, *args, **kwargs):
    if point == "before_register":
        kill()
    register(self, *args, **kwargs)
    kill()
MlflowClient.create_model_version = killed
if point == "in_training":
    tasks.model.train.train = kill
train_step(get_settings(), FeatureTable.model_validate_json(sys.argv[2]), RetrainParams.model_validate_json(sys.argv[3]),
           Lineage.model_validate_json(sys.argv[4]))
"""


@pytest.fixture
def features(tmp_path) -> FeatureTable:
    n = sum(ROWS.values())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 3))
    zone = rng.choice(["a", "b", "c"], size=n)
    price = np.exp(12.0 + 0.3 * x[:, 0] - 0.2 * x[:, 1] + rng.normal(scale=0.05, size=n))
    df = pl.DataFrame({"x0": x[:, 0], "x1": x[:, 1], "x2": x[:, 2], "zone": zone, "price": price,
                       SPLIT: [s for s, k in ROWS.items() for _ in range(k)]})
    uri = str(tmp_path / "features" / "part-0.parquet")
    Path(uri).parent.mkdir()
    df.write_parquet(uri)
    Path(lake.manifest_uri(uri)).write_text(json.dumps({"metadata": {}}))
    prep_uri = tmp_path / "preprocessing.json"
    prep_uri.write_text(PREP.model_dump_json())
    return FeatureTable(features_uri=uri, features_sha256="f" * 64, preprocessing_uri=str(prep_uri),
                        preprocessing_sha256="p" * 64, window_start=LINEAGE.window_start,
                        window_end=LINEAGE.window_end, rows=ROWS, partitions=1, partitions_sha256="d" * 64)


def killed_try(point: str, features: FeatureTable) -> None:
    out = subprocess.run([sys.executable, "-c", KILLED_TRY, point, features.model_dump_json(),
                          PARAMS.model_dump_json(), LINEAGE.model_dump_json()],
                         cwd=REPO, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]


def train(settings, features):
    from tasks.model.retrain import train_step

    return train_step(settings, features, PARAMS, LINEAGE)


def store(settings):
    c = tracking.client(settings)
    return c, tracking.experiment_id(c, settings)


def runs(settings) -> list:
    c, exp = store(settings)
    return tracking.find_runs(c, exp, LINEAGE.dag_id, LINEAGE.run_id, "train")


def versions(settings) -> list:
    """Every model version registered for the Airflow run (by its lineage tags), oldest first."""
    c, _ = store(settings)
    found = c.search_model_versions(f"name = '{settings.model_name}'")
    return sorted((mv for mv in found if mv.tags.get(tracking.TAG_RUN_ID) == LINEAGE.run_id),
                  key=lambda mv: int(mv.version))


def local(source: str) -> Path:
    """The folder of a version's bundle (the test store's artifacts are local files)."""
    return Path(unquote(urlparse(source).path))


def live(vs: list) -> list:
    return [mv for mv in vs if not mv.tags.get(tracking.TAG_ORPHAN)]


def test_a_try_killed_after_registering_is_reused(fresh_settings, features):
    killed_try("after_register", features)
    (left,) = runs(fresh_settings)
    (registered,) = versions(fresh_settings)
    assert "model_version" not in left.data.tags  # what the kill left: the old code trained a second version

    out = train(fresh_settings, features)

    assert out.reused and out.model_version == str(registered.version) and out.mlflow_run_id == left.info.run_id
    assert out.val_rmse_ln is not None
    assert [str(mv.version) for mv in versions(fresh_settings)] == [str(registered.version)]  # one version, no second
    (run,) = runs(fresh_settings)
    assert run.info.status == "FINISHED" and run.data.tags["model_version"] == str(registered.version)
    assert train(fresh_settings, features).model_version == str(registered.version)  # and again: still the one


def test_a_run_left_running_with_a_complete_version_is_reused(fresh_settings, features):
    registered = registered_try(fresh_settings, "RUNNING", tag_version=False)
    (left,) = runs(fresh_settings)
    assert left.info.status == "RUNNING"

    out = train(fresh_settings, features)

    assert out.reused and out.model_version == registered and out.mlflow_run_id == left.info.run_id
    assert [str(mv.version) for mv in versions(fresh_settings)] == [registered]
    (run,) = runs(fresh_settings)
    assert run.info.status == "FINISHED" and run.data.tags["model_version"] == registered


def test_b_tries_killed_before_registering_are_marked_orphan_and_one_version_is_made(fresh_settings, features):
    killed_try("in_training", features)
    (first,) = runs(fresh_settings)
    assert first.info.status == "RUNNING"
    killed_try("before_register", features)  # the first retry, itself killed: it marked the first try orphan
    second, _ = runs(fresh_settings)
    assert versions(fresh_settings) == []

    out = train(fresh_settings, features)

    assert not out.reused and out.mlflow_run_id not in (first.info.run_id, second.info.run_id)
    (made,) = versions(fresh_settings)
    assert str(made.version) == out.model_version and made.run_id == out.mlflow_run_id
    by_id = {r.info.run_id: r for r in runs(fresh_settings)}
    assert {by_id[r.info.run_id].info.status for r in (first, second)} == {"FAILED"}
    assert "killed before registering" in by_id[first.info.run_id].data.tags[tracking.TAG_ORPHAN]
    assert "without a registered model version" in by_id[second.info.run_id].data.tags[tracking.TAG_ORPHAN]
    assert by_id[out.mlflow_run_id].info.status == "FINISHED"
    again = train(fresh_settings, features)
    assert again.reused and again.model_version == out.model_version and len(versions(fresh_settings)) == 1


def test_c_a_version_without_its_weights_is_tagged_not_reused_and_replaced(fresh_settings, features):
    first = train(fresh_settings, features)
    (mv,) = versions(fresh_settings)
    weights = local(mv.source) / "model.safetensors"
    assert weights.is_file()
    weights.unlink()

    out = train(fresh_settings, features)

    assert not out.reused and out.model_version != first.model_version
    old, new = versions(fresh_settings)
    assert (str(old.version), str(new.version)) == (first.model_version, out.model_version)
    assert "has no model.safetensors" in old.tags[tracking.TAG_ORPHAN]
    assert live(versions(fresh_settings)) == [new]  # one usable version for the Airflow run
    by_id = {r.info.run_id: r for r in runs(fresh_settings)}
    assert by_id[first.mlflow_run_id].info.status == "FAILED"
    assert "has no model.safetensors" in by_id[first.mlflow_run_id].data.tags[tracking.TAG_ORPHAN]
    # The serving pages' lookup (the newest FINISHED run) now names the new version.
    c, exp = store(fresh_settings)
    assert tracking.find_run(c, exp, LINEAGE.dag_id, LINEAGE.run_id, "train").info.run_id == out.mlflow_run_id
    assert train(fresh_settings, features).model_version == out.model_version


def test_d_a_finished_run_is_reused_as_before(fresh_settings, features):
    first = train(fresh_settings, features)
    (mv,) = versions(fresh_settings)
    assert json.loads(mv.tags["bundle.sizes"])["model.safetensors"] > 0  # what a retry checks

    out = train(fresh_settings, features)

    assert out.reused and (out.mlflow_run_id, out.model_version) == (first.mlflow_run_id, first.model_version)
    assert out.val_rmse_ln == pytest.approx(first.val_rmse_ln)
    assert len(versions(fresh_settings)) == 1 and len(runs(fresh_settings)) == 1
    assert tracking.TAG_ORPHAN not in runs(fresh_settings)[0].data.tags


def test_a_truncated_weights_file_is_not_reused(fresh_settings, features):
    first = train(fresh_settings, features)
    (mv,) = versions(fresh_settings)
    weights = local(mv.source) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])

    out = train(fresh_settings, features)

    assert not out.reused and out.model_version != first.model_version
    assert "truncated or changed model.safetensors" in versions(fresh_settings)[0].tags[tracking.TAG_ORPHAN]
    assert len(live(versions(fresh_settings))) == 1


def registered_try(settings, status: str, tag_version: bool) -> str:
    """A try's run with a complete registered bundle (an untrained net: no training needed), as the code before
    this fix could leave two of for one Airflow run. Returns the version."""
    from tasks.model.bundle import save_bundle
    from tasks.model.config import ModelConfig
    from tasks.model.networks import build_net

    c, exp = store(settings)
    run = c.create_run(exp, tags={**LINEAGE.tags(), tracking.TAG_TASK: "train"})
    cfg = ModelConfig(family="mlp", hidden=[8])
    with tempfile.TemporaryDirectory() as tmp:
        save_bundle(Path(tmp) / "model", build_net(PREP, cfg), cfg, PREP)
        c.log_artifacts(run.info.run_id, str(Path(tmp) / "model"), "model")
    tracking.ensure_registered_model(c, settings.model_name)
    mv = c.create_model_version(settings.model_name, source=f"{run.info.artifact_uri}/model",
                                run_id=run.info.run_id, tags=LINEAGE.tags())
    if tag_version:
        c.set_tag(run.info.run_id, "model_version", mv.version)
    if status != "RUNNING":
        c.set_terminated(run.info.run_id, status)
    return str(mv.version)


def test_of_two_complete_versions_the_finished_runs_is_kept_and_the_other_tagged(fresh_settings, features):
    doubled = registered_try(fresh_settings, "RUNNING", tag_version=False)
    named = registered_try(fresh_settings, "FINISHED", tag_version=True)

    out = train(fresh_settings, features)

    assert out.reused and out.model_version == named
    assert [str(mv.version) for mv in live(versions(fresh_settings))] == [named]
    (other,) = [mv for mv in versions(fresh_settings) if str(mv.version) == doubled]
    assert f"superseded by version {named}" in other.tags[tracking.TAG_ORPHAN]
    assert {r.info.status for r in runs(fresh_settings)} == {"FINISHED", "FAILED"}


def test_a_zombie_try_whose_run_a_later_try_gave_up_does_not_register(fresh_settings, features):
    """A try still alive after Airflow started the retry (a lost heartbeat) finds its run marked orphan
    just before registering, and stops."""
    from tasks.model.config import ModelConfig
    from tasks.model.networks import build_net
    from tasks.model.retrain import _save_and_register
    from tasks.model.train import TrainResult

    c, exp = store(fresh_settings)
    run = c.create_run(exp, tags={**LINEAGE.tags(), tracking.TAG_TASK: "train"})
    tracking.mark_orphan_run(c, run, "attempt killed before registering a model version (run left RUNNING)")
    cfg = ModelConfig(family="mlp", hidden=[8])
    result = TrainResult(net=build_net(PREP, cfg), metrics={"val_rmse_ln": 0.2}, best_epoch=0, epochs_run=1,
                         seconds=1.0)

    with pytest.raises(RuntimeError, match="marked orphan by a later try"):
        _save_and_register(c, fresh_settings, run, result, cfg, PREP, features.features_uri, LINEAGE.tags())
    assert versions(fresh_settings) == []


# ---------------------------------------------------------------------------------------------
# price_model_tune's run_trial: the same pattern (no model version; the trial's metric is its result)

TRIAL = Trial(trial=3, config={"family": "mlp", "hidden": [8], "batch_size": 64, "max_epochs": 1})


def trial_runs(settings) -> list:
    from tasks.model.tune import tuning_settings

    ts = tuning_settings(settings)
    c, exp = store(ts)
    return tracking.find_runs(c, exp, LINEAGE.dag_id, LINEAGE.run_id, f"trial-{TRIAL.trial}")


def left_trial_run(settings, metric: float | None):
    """A trial run as a try killed mid-way leaves it: RUNNING, with or without its metric."""
    from tasks.model.tune import KIND_TRIAL, MONITOR, TAG_KIND, tuning_settings

    c, exp = store(tuning_settings(settings))
    run = c.create_run(exp, tags={**LINEAGE.tags(), tracking.TAG_TASK: f"trial-{TRIAL.trial}", TAG_KIND: KIND_TRIAL})
    if metric is not None:
        c.log_metric(run.info.run_id, MONITOR, metric)
    return run


def test_a_trial_run_left_running_with_its_metric_is_reused(fresh_settings, features):
    from tasks.model.tune import run_trial

    left = left_trial_run(fresh_settings, 0.25)

    out = run_trial(fresh_settings, features, TRIAL, LINEAGE)

    assert out.reused and out.mlflow_run_id == left.info.run_id and out.val_rmse_ln == 0.25
    (run,) = trial_runs(fresh_settings)
    assert run.info.status == "FINISHED"


def test_a_trial_run_left_without_its_metric_is_orphaned_and_trained_once(fresh_settings, features):
    from tasks.model.tune import MONITOR, run_trial

    left = left_trial_run(fresh_settings, None)

    out = run_trial(fresh_settings, features, TRIAL, LINEAGE)

    assert not out.reused and out.mlflow_run_id != left.info.run_id
    by_id = {r.info.run_id: r for r in trial_runs(fresh_settings)}
    assert len(by_id) == 2
    assert by_id[left.info.run_id].info.status == "FAILED"
    assert MONITOR in by_id[left.info.run_id].data.tags[tracking.TAG_ORPHAN]
    assert by_id[out.mlflow_run_id].info.status == "FINISHED"
    again = run_trial(fresh_settings, features, TRIAL, LINEAGE)
    assert again.reused and again.mlflow_run_id == out.mlflow_run_id and len(trial_runs(fresh_settings)) == 2
