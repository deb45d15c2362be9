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


def _adapter(original: dict, rank: int, seed: int = 0) -> dict:
    """A PEFT-layout LoRA (as LongLive saves it) on every block's self-attention q and v and the FFN's first layer."""
    g = torch.Generator().manual_seed(seed)
    lora = {}
    for key, weight in original.items():
        module = key.removeprefix("model.").removesuffix(".weight")
        if key.endswith(".weight") and module.split(".", 2)[-1] in ("self_attn.q", "self_attn.v", "ffn.0"):
            out_dim, in_dim = weight.shape
            lora[f"base_model.model.{module}.lora_A.weight"] = torch.randn(rank, in_dim, generator=g) * 0.3
            lora[f"base_model.model.{module}.lora_B.weight"] = torch.randn(out_dim, rank, generator=g) * 0.3
    return lora


@pytest.mark.parametrize("alpha_from", ["file", "flag", "adapter_config", "rslora_config", "rslora_file"])
def test_a_longlive_base_plus_lora_converts_to_the_merged_weights_built_directly(alpha_from, tmp_path):
    import copy

    from scd.wan.causal_wan import CausalWan
    from scd.wan.convert import original_name
    from scd.wan.pipeline import load_causal_wan
    from tests.wan_tiny import LATENT, TINY

    stock = tiny("wan")
    original = original_layout(stock.state_dict())
    rank, alpha = 4, 8.0
    lora = _adapter(original, rank)
    torch.save({"generator": original}, tmp_path / "base.pt")
    rslora = alpha_from.startswith("rslora")
    if alpha_from in ("file", "rslora_file"):
        torch.save({"generator_lora": lora, "lora_alpha": alpha, **({"use_rslora": True} if rslora else {})},
                   tmp_path / "lora.pt")
    else:
        torch.save({"generator_lora": lora}, tmp_path / "lora.pt")
    if alpha_from in ("adapter_config", "rslora_config"):  # PEFT's LoraConfig as saved beside an adapter
        (tmp_path / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": alpha, "use_rslora": rslora,
                                                                  "rank_pattern": {}, "alpha_pattern": {}}))
    notes: list[str] = []
    convert(tmp_path / "base.pt", tmp_path / "out", heads=TINY["num_attention_heads"], lora=tmp_path / "lora.pt",
            lora_alpha=alpha if alpha_from == "flag" else None, notes=notes)
    assert any("rank 4, alpha 8" in note for note in notes)
    # The same weights built directly: each adapted diffusers weight plus (alpha / rank) B A, or (alpha / sqrt(rank))
    # B A for a rank-stabilised adapter (PEFT's LoraLayer.update_layer: scaling = lora_alpha / math.sqrt(r)).
    scale = alpha / rank ** 0.5 if rslora else alpha / rank
    direct = copy.deepcopy(stock)
    merged = direct.state_dict()
    for key in merged:
        module = original_name(key).removesuffix(".weight")
        a = lora.get(f"base_model.model.{module}.lora_A.weight")
        if a is not None and key.endswith(".weight"):
            merged[key] = merged[key] + scale * lora[f"base_model.model.{module}.lora_B.weight"] @ a
    direct.load_state_dict(merged)
    model = load_causal_wan(tmp_path / "out", LATENT)
    x, t = torch.randn(1, 2, 4, *LATENT), torch.tensor([[0.0, 500.0]])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t), CausalWan(direct, LATENT)(x, t), atol=1e-5, rtol=0)
        assert not torch.allclose(model(x, t), CausalWan(copy.deepcopy(stock), LATENT)(x, t), atol=1e-3)  # it did merge


def test_a_lora_without_its_alpha_or_of_another_model_is_refused_in_one_line(weights, tmp_path):
    torch.save({"generator": weights}, tmp_path / "base.pt")
    torch.save({"generator_lora": _adapter(weights, 2)}, tmp_path / "lora.pt")
    with pytest.raises(ConversionError, match="does not say its LoRA alpha") as caught:
        convert(tmp_path / "base.pt", tmp_path / "out", heads=2, lora=tmp_path / "lora.pt")
    assert "\n" not in str(caught.value) and not (tmp_path / "out").exists()
    stray = {"base_model.model.blocks.9.self_attn.q.lora_A.weight": torch.ones(2, 24),
             "base_model.model.blocks.9.self_attn.q.lora_B.weight": torch.ones(24, 2)}
    torch.save({"generator_lora": stray, "lora_alpha": 2}, tmp_path / "stray.pt")
    with pytest.raises(ConversionError, match="adapts blocks.9.self_attn.q, which base.pt does not have"):
        convert(tmp_path / "base.pt", tmp_path / "out", heads=2, lora=tmp_path / "stray.pt")
    assert not (tmp_path / "out").exists()


def test_a_diffusers_layout_self_forcing_checkpoint_converts_unchanged(tmp_path):
    from scd.wan.pipeline import load_causal_wan
    from tests.wan_tiny import LATENT, TINY

    stock = tiny("wan")
    torch.save({"generator_ema": {f"model.{k}": v for k, v in stock.state_dict().items()}}, tmp_path / "sf.pt")
    convert(tmp_path / "sf.pt", tmp_path / "out", heads=TINY["num_attention_heads"])
    loaded = load_causal_wan(tmp_path / "out", LATENT).transformer.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in stock.state_dict().items())


@pytest.mark.parametrize("width,blocks,heads", [(1536, 30, 12), (5120, 40, 40)])
def test_the_shapes_of_wan_1_3b_and_14b_give_their_blocks_and_heads(width, blocks, heads):
    """Krea Realtime and Wan-2.1-14B (40 blocks, width 5120, 40 heads) beside the 1.3B, read off the shapes alone
    (zero-stride tensors: no 14B of memory)."""
    from scd.wan.convert import infer_config

    def shaped(*shape):
        return torch.zeros(1).expand(*shape)
    state = {"patch_embedding.weight": shaped(width, 16, 1, 2, 2), "proj_out.weight": shaped(64, width),
             "condition_embedder.text_embedder.linear_1.weight": shaped(width, 4096),
             "condition_embedder.time_embedder.linear_1.weight": shaped(width, 256),
             "blocks.0.ffn.net.0.proj.weight": shaped(8960 if width == 1536 else 13824, width),
             "blocks.0.norm2.weight": shaped(width)}
    state |= {f"blocks.{i}.attn1.to_q.weight": shaped(width, width) for i in range(blocks)}
    family, config = infer_config(state)
    assert family == "WanTransformer3DModel" and config["num_layers"] == blocks
    assert config["num_attention_heads"] == heads and config["attention_head_dim"] == 128


def test_a_lora_whose_merge_overflows_is_refused_and_writes_nothing(tmp_path):
    """Finite factors whose product, at the scale asked, overflows the base's float32: nothing is written."""
    from tests.wan_tiny import TINY

    original = original_layout(tiny("wan").state_dict())
    lora = {k: v * 1e20 for k, v in _adapter(original, 2).items()}
    torch.save({"generator": original}, tmp_path / "base.pt")
    torch.save({"generator_lora": lora}, tmp_path / "lora.pt")
    with pytest.raises(ConversionError, match="infinite or NaN weights") as caught:
        convert(tmp_path / "base.pt", tmp_path / "out", heads=TINY["num_attention_heads"], lora=tmp_path / "lora.pt",
                lora_alpha=2.0)
    assert "\n" not in str(caught.value) and not (tmp_path / "out").exists()
