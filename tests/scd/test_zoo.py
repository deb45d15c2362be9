import json

import pytest
import torch

from scd.models.baseline import BASELINE_SIZES, CausalVideoDiffuser
from scd.zoo import CheckpointError, load_model, save_model
from tests.conftest import randomize


@pytest.fixture
def checkpoint(tmp_path):
    model = randomize(CausalVideoDiffuser(BASELINE_SIZES["tiny"]))
    save_model(model, tmp_path / "model.safetensors")
    return model, tmp_path


def test_round_trip_through_a_directory_and_a_file(checkpoint, tmp_path):
    model, path = checkpoint
    for source in (path, path / "model.safetensors"):
        loaded = load_model(source)
        assert not loaded.training
        for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
            assert torch.equal(a, b), name
    half = save_model(model, tmp_path / "half" / "tiny.safetensors", dtype=torch.float16)
    assert json.loads(half.with_suffix(".json").read_text())["dtype"] == "float16"
    assert load_model(half).blocks[0].attn.qkv.weight.dtype == torch.float32  # float32 by default on load


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_files_and_unknown_names(tmp_path):
    with pytest.raises(CheckpointError, match="unknown model 'nope'.*accepted") as e:
        load_model("nope")
    _one_line(e)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="missing"):
        load_model(tmp_path)


def test_truncated_weights_are_refused(checkpoint):
    _, path = checkpoint
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="sha256") as e:
        load_model(path)
    _one_line(e)
    config = json.loads((path / "config.json").read_text())
    del config["sha256"]  # without the hash the safetensors reader must still catch it
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="corrupt or truncated") as e:
        load_model(path)
    _one_line(e)


def test_weights_that_do_not_fit_the_config_are_refused(checkpoint):
    _, path = checkpoint
    config = json.loads((path / "config.json").read_text())
    for change, expected in [({"width": 64}, "shape"), ({"depth": 5}, "missing"), ({"family": "wan"}, "unknown model family"),
                             ({"bogus": 1}, "unknown baseline config fields")]:
        bad = {k: v for k, v in config.items() if k != "sha256"} | change
        (path / "config.json").write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=expected) as e:
            load_model(path)
        _one_line(e)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(path)
