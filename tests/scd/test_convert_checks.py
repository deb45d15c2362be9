"""`probe convert` and `scd.wan.convert.convert`: the weights checked as the toolkit's checkpoints are, EMA or raw chosen
explicitly, compiled (`_orig_mod.`) and sharded checkpoints converted, refusals one line in the file's own names
(a pickle checkpoint's note never adds a line to a refusal), and the tree unchanged by every refusal."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from probe_cli import main
from scd.wan.convert import ConversionError, convert
from tests.cli.test_bad_input import _tree
from tests.scd.test_causal_wan import original_layout
from tests.wan_tiny import tiny


@pytest.fixture(scope="module")
def weights():
    return original_layout(tiny("wan").state_dict())


def _first(state: dict) -> str:
    return sorted(k for k in state if k.endswith(".weight"))[0]


# name -> (how the source is written from the original-layout weights, extra flags, what the one line says)
BAD = {
    "nan": (lambda d, w: save_file({**w, _first(w): torch.full_like(w[_first(w)], float("nan"))}, d / "c.safetensors"),
            [], "holds NaN or infinite values"),
    "inf_pt": (lambda d, w: torch.save({"generator": {**w, _first(w): torch.full_like(w[_first(w)], float("inf"))}},
                                       d / "c.pt"), [], "holds NaN or infinite values"),
    "int8": (lambda d, w: save_file({**w, _first(w): w[_first(w)].to(torch.int8)}, d / "c.safetensors"), [],
             "is int8; accepted: float32"),
    "both_weights": (lambda d, w: torch.save({"generator": w, "generator_ema": w}, d / "c.pt"), [],
                     "holds both generator_ema and generator weights; accepted: --ema"),
    "ema_without_choice": (lambda d, w: save_file(w, d / "c.safetensors"), ["--ema"], "does not hold both"),
    "frames_per_block_on_wan": (lambda d, w: save_file(w, d / "c.safetensors"), ["--frames-per-block", "3"],
                                "is a Wan checkpoint"),
    "unknown_and_missing": (lambda d, w: save_file({**{k: v for k, v in w.items() if k != "model.head.head.bias"},
                                                    "model.blocks.0.mystery.weight": torch.zeros(1)}, d / "c.safetensors"),
                            [], "unknown model.blocks.0.mystery.weight, missing head.head.bias"),
    "garbage_pt": (lambda d, w: (d / "c.pt").write_bytes(b"not a pickle"), [], "cannot be read with weights_only=True"),
    "bad_index": (lambda d, w: (d / "c.safetensors.index.json").write_text("{}"), [], "not a sharded checkpoint's index"),
    "index_missing_shard": (lambda d, w: (d / "c.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "gone-00001-of-00002.safetensors"}})), [], "which is not beside it"),
    "duplicate_shards": (lambda d, w: (save_file(w, d / "s-1.safetensors"), save_file(w, d / "s-2.safetensors")), [],
                         "is also in another shard"),
}


def _source(tmp, name):
    files = sorted(p for p in tmp.iterdir() if p.name.startswith(("c.", "s-")))
    return tmp if name == "duplicate_shards" else next(p for p in files if p.name.endswith((".json", ".pt", ".safetensors")))


@pytest.mark.parametrize("name", BAD)
def test_a_bad_checkpoint_is_refused_in_one_line_and_nothing_changes(name, weights, tmp_path, capsys):
    make, flags, expected = BAD[name]
    source_dir = tmp_path / ("shards" if name == "duplicate_shards" else "src")
    source_dir.mkdir()
    make(source_dir, weights)
    source = _source(source_dir, name)
    before = _tree(tmp_path)
    code = main(["convert", str(source), str(tmp_path / "out"), "--heads", "2", *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err and "warning" not in err, err
    assert expected in err, err
    assert _tree(tmp_path) == before
    with pytest.raises(ConversionError):
        convert(source, tmp_path / "out2", heads=2, frames_per_block=3 if "frames_per_block" in name else None,
                ema=True if "ema_without" in name else None)


def test_ema_or_raw_is_chosen_explicitly_and_said(weights, tmp_path, capsys):
    raw = {k: v + 1 for k, v in weights.items()}
    torch.save({"generator": raw, "generator_ema": weights, "step": 3}, tmp_path / "sf.pt")
    for flag, expected in (("--ema", weights), ("--no-ema", raw)):
        out = tmp_path / flag.strip("-")
        assert main(["convert", str(tmp_path / "sf.pt"), str(out), "--heads", "2", flag]) == 0
        said = capsys.readouterr().out
        assert ("generator_ema (the EMA weights)" if flag == "--ema" else "generator (the raw weights") in said
        assert "torch.load(weights_only=True)" in said
        converted = load_file(out / "diffusion_pytorch_model.safetensors")
        assert torch.equal(converted["proj_out.weight"], expected["model.head.head.weight"])
        assert json.loads((out / "convert.json").read_text())["notes"]
    assert main(["convert", str(tmp_path / "sf.pt"), str(tmp_path / "q"), "--heads", "2", "--ema", "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"wrote {tmp_path / 'q'}"]


def test_compiled_and_sharded_checkpoints_convert_to_the_same_weights(weights, tmp_path):
    save_file(weights, tmp_path / "plain.safetensors")
    convert(tmp_path / "plain.safetensors", tmp_path / "plain", heads=2)
    expected = load_file(tmp_path / "plain" / "diffusion_pytorch_model.safetensors")
    compiled = {k.replace("model.", "model._orig_mod.", 1): v for k, v in weights.items()}
    save_file(compiled, tmp_path / "compiled.safetensors")
    convert(tmp_path / "compiled.safetensors", tmp_path / "compiled", heads=2)
    keys = sorted(weights)
    halves = {"m-00001-of-00002.safetensors": keys[: len(keys) // 2], "m-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    (tmp_path / "sharded").mkdir()
    for name, part in halves.items():
        save_file({k: weights[k] for k in part}, tmp_path / "sharded" / name)
    index = {"weight_map": {k: name for name, part in halves.items() for k in part}}
    (tmp_path / "sharded" / "m.safetensors.index.json").write_text(json.dumps(index))
    convert(tmp_path / "sharded" / "m.safetensors.index.json", tmp_path / "from-index", heads=2)
    convert(tmp_path / "sharded", tmp_path / "from-dir", heads=2)
    for out in ("compiled", "from-index", "from-dir"):
        got = load_file(tmp_path / out / "diffusion_pytorch_model.safetensors")
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
