import json
from importlib import metadata

import numpy as np
import pandas as pd
import pytest
import torch

from probes.recording import load_run
from probes.store import RunError, write_run

MANIFEST = {"model": "baseline", "config": {}, "depth": 30, "block_roles": ["causal"] * 30, "frames_per_block": 1,
            "layers": [15, 28], "layer_roles": ["causal", "causal"],
            "capture": ["features", "attention"], "mode": "stream", "frames": [4, 5], "steps": [0, 1, 2],
            "timesteps": [1000.0, 666.7, 333.3], "tokens_per_frame": 16, "token_grid": [4, 4], "num_frames": 6, "context": 4,
            "bands": 1}


def _write(path, force=False, seed=0, manifest=None):
    """A run of two layers (stream mode: 4 of 16 tokens kept), 2 probed frames of 6, 3 steps, 2 heads."""
    g = torch.Generator().manual_seed(seed)
    features = {}
    for layer in (15, 28):
        features |= {f"layer{layer}": torch.randn(2, 3, 4, 8, generator=g), f"layer{layer}.tokens": torch.arange(4),
                     f"layer{layer}.gram": torch.randn(2, 3, 3, generator=g, dtype=torch.float64),
                     f"layer{layer}.token_cosine": torch.randn(2, 3, 3, generator=g, dtype=torch.float64),
                     f"layer{layer}.centred_cosine": torch.randn(2, 3, 3, generator=g, dtype=torch.float64),
                     f"layer{layer}.cka": torch.rand(2, 3, 3, generator=g, dtype=torch.float64)}
    attention = {"layer15": torch.softmax(torch.randn(2, 3, 2, 6, generator=g), -1),
                 "layer28": torch.full((2, 3, 2, 6), 1 / 6)}
    attention |= {f"{key}.map": mass[..., None, :] / 16 for key, mass in list(attention.items())}
    metrics = pd.DataFrame({"layer": [15], "frame": [4], "metric": ["cos"], "value": [0.9 - seed / 10]})
    video = np.random.default_rng(seed).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    write_run(path, {**MANIFEST, "seed": seed, **(manifest or {})}, features=features, attention=attention,
              metrics=metrics, generated=video, ground_truth=video[::-1].copy(), force=force)
    return features, attention, metrics, video


def test_round_trip(tmp_path):
    features, attention, metrics, video = _write(tmp_path / "run")
    run = load_run(tmp_path / "run")
    assert run.manifest["complete"] is True and run.manifest["model"] == "baseline"
    assert run.manifest["versions"]["torch"] == metadata.version("torch")
    assert run.manifest["git_revision"] is None or len(run.manifest["git_revision"]) == 40
    assert run.features(15).dtype == torch.float16 and torch.equal(run.features(15), features["layer15"].half())
    assert run.feature_layers == [15, 28] and torch.equal(run.token_index(15), torch.arange(4))
    assert run.gram(15).dtype == torch.float64 and torch.equal(run.gram(15), features["layer15.gram"])  # side entries as given
    assert torch.equal(run.attention(28), attention["layer28"]) and run.attention_layers == [15, 28]
    pd.testing.assert_frame_equal(run.metrics, metrics)
    generated, truth = run.video()
    assert np.array_equal(generated, video) and np.array_equal(truth, video[::-1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary left behind


def test_an_existing_run_is_replaced_only_with_force(tmp_path):
    _write(tmp_path / "run", seed=0)
    with pytest.raises(RunError, match="pass force=True"):
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
    with pytest.raises(RunError, match="truncated or replaced"):
        load_run(tmp_path / "run")


def test_an_unrecorded_layer_names_the_recorded_ones(tmp_path):
    _write(tmp_path / "run")
    with pytest.raises(RunError, match="layer 3 has no recorded attention; recorded layers: 15, 28"):
        load_run(tmp_path / "run").attention(3)


def test_a_file_swapped_in_from_another_run_is_refused(tmp_path):
    """Two runs of the same settings: their files have the same names, shapes and sizes, but not the same bytes."""
    _write(tmp_path / "a", seed=0)
    _write(tmp_path / "b", seed=1)
    for name in ("features.safetensors", "attention.safetensors", "video.npz", "metrics.parquet"):
        original = (tmp_path / "a" / name).read_bytes()
        (tmp_path / "a" / name).write_bytes((tmp_path / "b" / name).read_bytes())
        with pytest.raises(RunError, match=f"{name} is not the file this run wrote"):
            load_run(tmp_path / "a")
        (tmp_path / "a" / name).write_bytes(original)
    load_run(tmp_path / "a")


@pytest.mark.parametrize("change, problem", [
    ({"layers": [15, 28, 29], "layer_roles": ["causal"] * 3}, "lacks layer29"),
    ({"steps": [0, 1], "timesteps": [1.0, 0.5]}, "has shape"),
    ({"frames": [3, 4, 5]}, "has shape"),
    ({"tokens_per_frame": 16, "mode": "full"}, "has shape"),
    ({"num_frames": 7}, "has shape"),
    ({"layers": "15"}, "layers is '15'"),
    ({"layers": [15.0, 28]}, "layers is"),
    ({"capture": ["logits"]}, "capture is"),
    ({"timesteps": [1.0]}, "timesteps is"),
    ({"layer_roles": ["causal"]}, "layer_roles is"),
])
def test_a_manifest_that_disagrees_with_its_files_is_refused(tmp_path, change, problem):
    _write(tmp_path / "run")
    path = tmp_path / "run" / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    with pytest.raises(RunError, match=problem):
        load_run(tmp_path / "run")
