"""Tuning (tasks/model/tune.py): the seeded sampler, the best pick by validation, the precedence of the result
in the retrain, the MLflow record, and the price_model_tune DAG end to end with ``dag.test()`` on a small lake."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pendulum
import pytest

from tasks.core.handoffs import FeatureTable, TrialResult
from tasks.core.params import RetrainParams, TuneParams
from tasks.model.config import ModelConfig, default_config
from tasks.model.tune import SEARCH_SPACE, pick_best, resolve_config, sample_trials
from tests.support import private_home

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------
# The sampler


def test_sampler_is_deterministic_per_seed_and_trial():
    a = sample_trials(10, 3, ["tabm", "mlp_plr"], 40)
    assert a == sample_trials(10, 3, ["tabm", "mlp_plr"], 40)
    assert sample_trials(4, 3, ["tabm", "mlp_plr"], 40) == a[:4], "adding trials never changes earlier ones"
    other = sample_trials(10, 4, ["tabm", "mlp_plr"], 40)
    assert other[0] == a[0] and other[1:] != a[1:]
    assert [t.trial for t in a] == list(range(10))


def test_trial_zero_is_the_default_and_every_trial_is_a_valid_config():
    trials = sample_trials(30, 0, ["tabm", "mlp_plr"], 25, max_time_s=100)
    default = default_config("tabm", max_epochs=25, max_time_s=100)
    assert ModelConfig(**trials[0].config) == default
    families = set()
    for t in trials:
        cfg = ModelConfig(**t.config)
        families.add(cfg.family)
        assert cfg.max_epochs == 25 and cfg.max_time_s == 100
        assert set(cfg.hidden) <= set(SEARCH_SPACE["width"].values) and len(cfg.hidden) in SEARCH_SPACE["depth"].values
        assert 5e-4 <= cfg.lr <= 4e-3 and 1e-5 <= cfg.weight_decay <= 1e-3
        assert ("k" in t.config) == (cfg.family == "tabm")
    assert families == {"tabm", "mlp_plr"}
    assert len({json.dumps(t.config, sort_keys=True) for t in trials}) == 30
    assert {ModelConfig(**t.config).family for t in sample_trials(8, 0, ["mlp"], 5)} == {"mlp"}


def test_best_is_picked_by_validation_rmse():
    results = [TrialResult(trial=i, val_rmse_ln=v, config={}) for i, v in
               enumerate([0.18, 0.17, float("nan"), 0.17, None])]
    assert pick_best(results).trial == 1  # the lowest; a tie goes to the lower trial; nan and None never win
    with pytest.raises(ValueError, match="no trial finished"):
        pick_best([TrialResult(trial=0, val_rmse_ln=math.inf, config={})])


# ---------------------------------------------------------------------------------------------
# Precedence in the retrain

TUNED = json.loads(ModelConfig(family="tabm", k=8, hidden=[128, 128], lr=1e-3, max_epochs=33, seed=5).model_dump_json())


def test_tuned_config_is_the_default_and_explicit_params_override_it():
    cfg, source = resolve_config(RetrainParams(), TUNED)
    assert source == "tuned" and cfg == ModelConfig(**TUNED)
    cfg, source = resolve_config(RetrainParams(max_epochs=7, seed=1), TUNED)
    assert source == "tuned" and (cfg.k, cfg.hidden, cfg.max_epochs, cfg.seed) == (8, [128, 128], 7, 1)
    cfg, source = resolve_config(RetrainParams(model_family="mlp"), TUNED)
    assert source == "defaults" and cfg == default_config("mlp")
    cfg, source = resolve_config(RetrainParams(use_tuned_config=False), TUNED)
    assert source == "defaults" and cfg == default_config("tabm")


def test_without_a_tuning_result_the_family_defaults_apply():
    cfg, source = resolve_config(RetrainParams(model_family="mlp_plr", max_epochs=9), None)
    assert source == "defaults" and cfg == default_config("mlp_plr", max_epochs=9)
    cfg, source = resolve_config(RetrainParams(), None)
    assert source == "defaults" and cfg.family == "tabm" and cfg.max_epochs == RetrainParams().max_epochs


def test_recorded_result_is_found_per_dataset_newest_first(fresh_settings):
    from tasks.core.lineage import Lineage
    from tasks.model.retrain import model_config
    from tasks.model.tune import best_config, record_best

    features = FeatureTable(preprocessing_sha256="p" * 64, features_sha256="f" * 64, features_uri="-",
                            preprocessing_uri="-", window_start="2013-05-28", window_end="2015-05-28", rows={},
                            partitions=0, partitions_sha256="-")
    assert best_config(fresh_settings, "king_county") is None
    lineage = Lineage(dag_id="price_model_tune", run_id="r1", window_start="2013-05-28", window_end="2015-05-28")
    other = dict(TUNED, lr=3e-3)
    first = record_best(fresh_settings, "king_county", features,
                        [TrialResult(trial=0, val_rmse_ln=0.2, config=other), TrialResult(trial=1, val_rmse_ln=0.1, config=TUNED)],
                        lineage)
    assert first.best_trial == 1 and first.best == TUNED
    record_best(fresh_settings, "elsewhere", features, [TrialResult(trial=0, val_rmse_ln=0.1, config=other)],
                lineage.model_copy(update={"run_id": "r2"}))
    found, run_id = best_config(fresh_settings, "king_county")
    assert found == TUNED and run_id == first.mlflow_run_id
    cfg, source, tuning_run = model_config(fresh_settings, "king_county", RetrainParams())
    assert source == "tuned" and cfg == ModelConfig(**TUNED) and tuning_run == run_id
    again = record_best(fresh_settings, "king_county", features, [], lineage)  # a retried task
    assert again.reused and again.mlflow_run_id == first.mlflow_run_id


# ---------------------------------------------------------------------------------------------
# The DAG end to end


@pytest.fixture(scope="module")
def tune_env(tmp_path_factory, airflow_db, spec):
    from test_comps import write_validated_lake

    from tasks.core.settings import get_settings

    home = tmp_path_factory.mktemp("tune")
    with private_home(home / "state"):
        settings = get_settings()
        write_validated_lake(Path(settings.lake_uri), spec, every=10)
        yield settings


@pytest.mark.e2e  # the whole tuning DAG through dag.test(), training included
def test_tuning_dag_fans_out_trials_and_records_the_best(tune_env):
    from airflow.dag_processing.dagbag import DagBag

    from tasks.core import tracking
    from tasks.model.retrain import model_config
    from tasks.model.tune import TAG_BEST, best_config, tuning_settings

    settings = tune_env
    dag = DagBag(dag_folder=str(REPO / "dags")).dags["price_model_tune"]
    conf = {"n_trials": 3, "max_epochs": 1, "seed": 1, "families": ["tabm", "mlp_plr"]}
    run = dag.test(logical_date=pendulum.datetime(2015, 5, 28, tz="UTC"), run_conf=conf)
    assert run.state == "success"
    ts = tuning_settings(settings)
    c = tracking.client(ts)
    exp = c.get_experiment_by_name(ts.experiment_name)
    trials = c.search_runs([exp.experiment_id], "tags.`homeworth.kind` = 'tuning-trial'")
    assert sorted(int(r.data.tags["homeworth.trial"]) for r in trials) == [0, 1, 2]
    best_val = min(r.data.metrics["val_rmse_ln"] for r in trials)
    found, run_id = best_config(settings, "king_county")
    result = c.get_run(run_id)
    assert result.data.metrics["best/val_rmse_ln"] == pytest.approx(best_val)
    assert json.loads(result.data.tags[TAG_BEST]) == found
    planned = sample_trials(3, 1, ["tabm", "mlp_plr"], 1, TuneParams().max_time_s)
    assert found in [t.config for t in planned]
    cfg, source, _ = model_config(settings, "king_county", RetrainParams())
    assert source == "tuned" and cfg == ModelConfig(**found)
