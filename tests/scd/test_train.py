import csv
import json
from dataclasses import asdict

import pytest
import torch
from safetensors import safe_open

from scd.models.baseline import BASELINE_SIZES
from scd.training.train import TrainConfig, TrainConfigError, learning_rate, train
from scd.zoo import load_model

TINY = dict(size="tiny", batch_size=4, frames=4, warmup=5, lr=3e-3, checkpoint_every=10, threads=1)


def _losses(run):
    return [float(r["loss"]) for r in csv.DictReader(open(run / "loss.csv"))]


def test_a_short_training_run_lowers_the_loss(tmp_path):
    train(TrainConfig(steps=120, **TINY), tmp_path / "run", progress=False)
    losses = _losses(tmp_path / "run")
    assert len(losses) == 120
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.8 * first, (first, last)


def test_resume_continues_from_the_saved_step_and_matches_an_uninterrupted_run(tmp_path):
    cfg = TrainConfig(steps=20, **TINY)
    train(cfg, tmp_path / "straight", progress=False)
    first = train(cfg, tmp_path / "resumed", progress=False, until=10)
    with safe_open(tmp_path / "resumed" / "train_state.safetensors", "pt") as f:
        assert f.metadata()["step"] == "10" and first["steps"] == 10
    with pytest.raises(ValueError, match="different training config"):  # resuming needs the same config
        train(TrainConfig(steps=20, **{**TINY, "lr": 1e-3}), tmp_path / "resumed", resume=True, progress=False)
    second = train(cfg, tmp_path / "resumed", resume=True, progress=False)
    assert second["resumed_from"] == 10 and second["steps"] == 20
    assert [int(r["step"]) for r in csv.DictReader(open(tmp_path / "resumed" / "loss.csv"))] == list(range(1, 21))
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "straight")
    a, b = load_model(tmp_path / "straight"), load_model(tmp_path / "resumed")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_a_run_is_not_overwritten_and_resume_needs_a_checkpoint(tmp_path):
    train(TrainConfig(steps=2, **TINY), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="--resume"):
        train(TrainConfig(steps=2, **TINY), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="nothing to resume"):
        train(TrainConfig(steps=2, **TINY), tmp_path / "empty", resume=True, progress=False)


def test_learning_rate_warms_up_then_decays():
    cfg = TrainConfig(steps=100, warmup=10, lr=1.0, min_lr_ratio=0.1)
    lrs = [learning_rate(cfg, s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False)) and lrs[-1] == pytest.approx(0.1, abs=1e-3)


def test_raw_and_ema_weights_of_a_run_and_the_dev_loss(tmp_path):
    from safetensors.torch import load_file

    from scd.training.train import dev_loss, load_trained

    train(TrainConfig(steps=6, **TINY), tmp_path / "run", progress=False)
    raw, ema = load_trained(tmp_path / "run", "raw"), load_trained(tmp_path / "run", "ema")
    state = load_file(tmp_path / "run" / "train_state.safetensors")
    assert all(torch.equal(v, state[f"model.{k}"]) for k, v in raw.state_dict().items())
    assert not torch.equal(raw.blocks[0].attn.qkv.weight, ema.blocks[0].attn.qkv.weight)
    assert dev_loss(raw, tmp_path / "run", clips=4) == dev_loss(raw, tmp_path / "run", clips=4)  # fixed noise
    with pytest.raises(ValueError, match="accepted: ema, raw"):
        load_trained(tmp_path / "run", "best")


def test_a_forced_restart_keeps_its_own_state_so_it_can_be_resumed(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(steps=2, **TINY), out, progress=False)
    cfg = TrainConfig(steps=4, **{**TINY, "checkpoint_every": 1})
    train(cfg, out, force=True, until=2, progress=False)  # a sitting of the new run, as a killed one leaves it
    with safe_open(out / "train_state.safetensors", "pt") as f:
        assert json.loads(f.metadata()["train_config"])["steps"] == 4 and f.metadata()["step"] == "2"
    assert train(cfg, out, resume=True, progress=False)["steps"] == 4


def test_a_fine_tune_starts_from_the_given_weights_and_refuses_another_architecture(tmp_path):
    from scd.zoo import build_model, load_model, save_model

    source = tmp_path / "source" / "model.safetensors"
    torch.manual_seed(3)
    start = build_model({"family": "baseline", **asdict(BASELINE_SIZES["tiny"])})
    for p in start.parameters():
        torch.nn.init.normal_(p, std=0.02)
    save_model(start, source)
    cfg = TrainConfig(steps=1, **{**TINY, "lr": 1e-12, "warmup": 0, "init": str(source.parent), "frame_local_blocks": 2})
    train(cfg, tmp_path / "tuned", progress=False)
    tuned = load_model(tmp_path / "tuned")
    assert tuned.config.frame_local_blocks == 2
    for (name, a), b in zip(start.state_dict().items(), tuned.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)  # lr ~ 0: still the given weights
    with pytest.raises(TrainConfigError, match="another architecture"):
        train(TrainConfig(steps=1, **{**TINY, "size": "baseline", "init": str(source.parent)}), tmp_path / "x",
              progress=False)
    assert not (tmp_path / "x").exists()
    with pytest.raises(TrainConfigError, match="init 'nowhere'"):
        train(TrainConfig(steps=1, **{**TINY, "init": "nowhere"}), tmp_path / "y", progress=False)
