import json
from importlib import metadata

import numpy as np
import pandas as pd
import pytest
import torch

from probes.store import RunError, load_run, write_run


def _write(path, force=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    features = {"layer15": torch.randn(2, 3, 4, 8, generator=g), "layer15.tokens": torch.arange(4),
                "layer15.gram": torch.randn(2, 3, 3, generator=g, dtype=torch.float64)}
    attention = {"layer15": torch.softmax(torch.randn(2, 3, 2, 6, generator=g), -1),
                 "layer28": torch.full((2, 3, 2, 6), 1 / 6)}
    metrics = pd.DataFrame({"layer": [15], "frame": [4], "metric": ["cos"], "value": [0.9]})
    video = np.random.default_rng(seed).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    write_run(path, {"model": "baseline", "layers": [15, 28], "seed": seed}, features=features, attention=attention,
              metrics=metrics, generated=video, ground_truth=video[::-1].copy(), force=force)
    return features, attention, metrics, video


def test_round_trip(tmp_path):
    features, attention, metrics, video = _write(tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.manifest["complete"] is True and run.manifest["model"] == "baseline"
    assert run.manifest["versions"]["torch"] == metadata.version("torch")
    assert run.manifest["git_revision"] is None or len(run.manifest["git_revision"]) == 40
    assert run.features(15).dtype == torch.float16 and torch.equal(run.features(15), features["layer15"].half())
    assert run.feature_layers == [15] and torch.equal(run.token_index(15), torch.arange(4))
    assert run.gram(15).dtype == torch.float64 and torch.equal(run.gram(15), features["layer15.gram"])  # side entries as given
    assert torch.equal(run.attention(28), attention["layer28"]) and run.attention_layers == [15, 28]
    pd.testing.assert_frame_equal(run.metrics, metrics)
    generated, truth = run.video()
    assert np.array_equal(generated, video) and np.array_equal(truth, video[::-1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary left behind


def test_an_existing_run_is_replaced_only_with_force(tmp_path):
    _write(tmp_path / "run", seed=0)
    with pytest.raises(RunError, match="--force"):
        _write(tmp_path / "run", seed=1)
    assert load_run(tmp_path / "run").manifest["seed"] == 0
    _write(tmp_path / "run", seed=1, force=True)
    assert load_run(tmp_path / "run").manifest["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RunError, match="uint8"):
        write_run(tmp_path / "run", {}, generated=np.zeros((2, 8, 8, 3)), ground_truth=np.zeros((2, 8, 8, 3)))
    assert list(tmp_path.iterdir()) == []


def test_incomplete_foreign_and_corrupt_directories_are_refused(tmp_path):
    with pytest.raises(RunError, match="not a run directory"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "foreign").mkdir()
    with pytest.raises(RunError, match="no manifest.json"):
        load_run(tmp_path / "foreign")
    _write(tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(RunError, match="incomplete"):
        load_run(tmp_path / "run")
    (tmp_path / "run" / "manifest.json").write_text(json.dumps({**manifest, "format": "other"}))
    with pytest.raises(RunError, match="not a run directory of this toolkit"):
        load_run(tmp_path / "run")
    (tmp_path / "run" / "manifest.json").write_text(json.dumps(manifest))
    weights = tmp_path / "run" / "features.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(RunError, match="corrupt or truncated"):
        load_run(tmp_path / "run")


def test_an_unrecorded_layer_names_the_recorded_ones(tmp_path):
    _write(tmp_path / "run")
    with pytest.raises(RunError, match="layer 3 is not in .*recorded layers: 15, 28"):
        load_run(tmp_path / "run").attention(3)
