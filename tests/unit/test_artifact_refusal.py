"""Artifacts are data, never code (issue 17): a preprocessing.json naming a module other than the deployed
spec's feature module (or one on HOMEWORTH_PREPROCESSING_ALLOWLIST) is refused before anything is imported,
and a model_config.json whose sizes are absurd is refused before anything is allocated."""

from __future__ import annotations

import importlib.util
import json
import sys
import uuid

import pytest
from pydantic import ValidationError

from tasks.features.preprocessing import NumericStat, Preprocessing, Vocabulary
from tasks.model.bundle import CONFIG, PREPROCESSING, ModelBundle, save_bundle
from tasks.model.config import ModelConfig
from tasks.model.networks import MAX_PARAMETERS, TabularNet, network_size

DEPLOYED = "tasks.datasets.king_county.features"


def prep(features_module: str | None = None) -> Preprocessing:
    return Preprocessing(
        dataset="synthetic", spec_sha256="0" * 64, features_module=features_module,
        numeric=[NumericStat(name=f"x{i}", lo=-3.0, hi=3.0, mean=0.0, std=1.0) for i in range(3)],
        categorical=[Vocabulary(name="zone", values=["a", "b", "c"])],
        target="price", target_transform="log", target_mean=12.0, target_std=0.5, fitted_on={})


@pytest.fixture
def bundle_dir(tmp_path):
    cfg = ModelConfig(family="mlp", hidden=[8])
    save_bundle(tmp_path / "model", TabularNet(3, [3], cfg), cfg, prep())
    return tmp_path / "model"


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A module written to a folder on the import path (as a file dropped in a landing zone on PYTHONPATH
    would be): importing it would write a marker file."""
    name = f"planted_{uuid.uuid4().hex[:12]}"
    marker = tmp_path / "imported"
    folder = tmp_path / "dropzone"
    folder.mkdir()
    (folder / f"{name}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef derive(lf):\n    return lf\n")
    monkeypatch.syspath_prepend(str(folder))
    assert importlib.util.find_spec(name) is not None, "the module is importable: only the check stops it"
    yield name, marker
    sys.modules.pop(name, None)


def tamper(bundle_dir, **changes) -> None:
    path = bundle_dir / PREPROCESSING
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("name", ["this", "os", "antigravity", "tasks.cli", "tasks.datasets.king_county.features.x",
                                  "../evil", "/tmp/evil", "evil.py", " tasks.datasets.king_county.features"])
def test_tampered_preprocessing_is_refused_before_import(bundle_dir, name):
    before = set(sys.modules)
    tamper(bundle_dir, features_module=name)
    with pytest.raises(ValidationError, match="features_module .* neither the deployed spec"):
        ModelBundle.load(bundle_dir)
    assert set(sys.modules) - before == set(), "nothing was imported"
    if name in ("this", "antigravity"):
        assert name not in sys.modules


def test_planted_module_is_never_imported(bundle_dir, planted):
    name, marker = planted
    tamper(bundle_dir, features_module=name)
    with pytest.raises(ValidationError, match=name):
        ModelBundle.load(bundle_dir)
    assert name not in sys.modules and not marker.exists()


def test_derive_checks_again(planted):
    """A preprocessing built without validation (model_construct) still cannot import a module."""
    from tasks.features.preprocessing import ArtifactRefused

    name, marker = planted
    p = Preprocessing.model_construct(**{**prep().model_dump(), "features_module": name})
    with pytest.raises(ArtifactRefused, match="HOMEWORTH_PREPROCESSING_ALLOWLIST"):
        p.derive(None)
    assert name not in sys.modules and not marker.exists()


def test_allowlist_admits_a_module(bundle_dir, planted, monkeypatch):
    import polars as pl

    from tasks.core.settings import get_settings

    name, marker = planted
    monkeypatch.setenv("HOMEWORTH_PREPROCESSING_ALLOWLIST", f"some.other, {name}")
    get_settings.cache_clear()
    try:
        tamper(bundle_dir, features_module=name)
        bundle = ModelBundle.load(bundle_dir)
        assert bundle.prep.derive(pl.LazyFrame({"a": [1]})).collect().height == 1
        assert marker.exists(), "allowed: imported and used"
    finally:
        monkeypatch.delenv("HOMEWORTH_PREPROCESSING_ALLOWLIST")
        get_settings.cache_clear()


def test_deployed_module_and_none_are_accepted():
    assert prep(DEPLOYED).features_module == DEPLOYED
    assert prep(None).features_module is None


@pytest.mark.parametrize("changes", [{"hidden": [10**9]}, {"hidden": [64] * 1000}, {"hidden": [0]}, {"k": 10**6},
                                     {"cat_embedding_dim": 10**7}, {"num_embedding_dim": 10**6},
                                     {"n_frequencies": 10**6}, {"batch_size": 10**12}, {"dropout": 1.5},
                                     {"lr": float("nan")}, {"seed": -1}, {"max_epochs": 10**9}])
def test_oversize_config_is_refused(changes):
    with pytest.raises(ValidationError):
        ModelConfig(**changes)


def test_sizes_within_bounds_that_together_are_absurd_are_refused_before_allocating(bundle_dir):
    cfg = ModelConfig(family="tabm", hidden=[4096] * 8, k=64, num_embedding_dim=256, n_frequencies=256)
    assert network_size(3, [3], cfg)[0] > MAX_PARAMETERS
    (bundle_dir / CONFIG).write_text(cfg.model_dump_json())
    with pytest.raises(ValueError, match="refused before allocating"):
        ModelBundle.load(bundle_dir)


def test_huge_vocabulary_is_refused_before_allocating(bundle_dir):
    (bundle_dir / CONFIG).write_text(ModelConfig(family="mlp", hidden=[8], cat_embedding_dim=256).model_dump_json())
    tamper(bundle_dir, categorical=[{"name": "zone", "values": [str(i) for i in range(250_000)]}])
    with pytest.raises(ValueError, match="parameters"):
        ModelBundle.load(bundle_dir)


def test_network_size_counts_what_is_built():
    for family in ("mlp", "mlp_plr", "tabm"):
        cfg = ModelConfig(family=family, hidden=[32, 16], k=3, n_frequencies=4, num_embedding_dim=5)
        net = TabularNet(7, [3, 10], cfg)
        assert network_size(7, [3, 10], cfg)[0] == sum(p.numel() for p in net.parameters())
