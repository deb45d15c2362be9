"""Diffusers directories are checked like the toolkit's own checkpoints: every class of damage a user's directory may
have is refused before anything runs, by `probe run` (exit 2, one line, the tree byte-identical) and by the Python
API (`load_causal_wan`: a CheckpointError), never loaded with random weights or run on NaN."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from probe_cli import main
from scd.contract import CachePolicy
from scd.wan.pipeline import load_causal_wan
from scd.zoo import CheckpointError
from tests.cli.test_bad_input import _tree
from tests.conftest import file_tree
from tests.wan_tiny import save_pipeline

WEIGHTS = "transformer/diffusion_pytorch_model.safetensors"


def _config(root: Path, **change) -> None:
    path = root / "transformer" / "config.json"
    config = json.loads(path.read_text())
    for key, value in change.items():
        if value is ...:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def _weights(root: Path, change) -> None:
    state = load_file(root / WEIGHTS)
    change(state)
    save_file(state, root / WEIGHTS)


def _first(state: dict) -> str:
    return sorted(k for k in state if k.endswith(".weight"))[0]


def _scheduler(root: Path, text: str) -> None:
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(text)


# name -> (damage, what the one line says); each damage is applied to a fresh copy of a tiny pipeline.
DAMAGES = {
    # the transformer's config: types and ranges of every field read
    "string_layers": (lambda r: _config(r, num_layers="2"), "num_layers = '2'; accepted: an integer"),
    "bool_heads": (lambda r: _config(r, num_attention_heads=True), "num_attention_heads = True; accepted"),
    "zero_heads": (lambda r: _config(r, num_attention_heads=0), "num_attention_heads = 0; accepted"),
    "float_dim": (lambda r: _config(r, attention_head_dim=12.0), "attention_head_dim = 12.0; accepted"),
    "odd_head_dim": (lambda r: _config(r, attention_head_dim=11), "attention_head_dim = 11; accepted: an even"),
    "huge_layers": (lambda r: _config(r, num_layers=10**9), "num_layers = 1000000000; accepted"),
    "patch_size_two": (lambda r: _config(r, patch_size=[2, 2]), "patch_size = [2, 2]; accepted"),
    "patch_size_text": (lambda r: _config(r, patch_size="1,2,2"), "patch_size = '1,2,2'; accepted"),
    "eps_text": (lambda r: _config(r, eps="1e-6"), "eps = '1e-6'; accepted"),
    "qk_norm": (lambda r: _config(r, qk_norm="group_norm"), "qk_norm = 'group_norm'; accepted"),
    "class": (lambda r: _config(r, _class_name="UNet2DModel"), "describes a UNet2DModel; accepted"),
    "config_list": (lambda r: (r / "transformer" / "config.json").write_text("[1]"), "accepted: a transformer config"),
    "config_garbage": (lambda r: (r / "transformer" / "config.json").write_bytes(b"\xff\x00"), "not a readable JSON"),
    "more_layers": (lambda r: _config(r, num_layers=3), "the weights lack blocks.2."),
    "fewer_layers": (lambda r: _config(r, num_layers=1), "is not a parameter of the config's"),
    "i2v": (lambda r: _config(r, image_dim=16), "image-to-video transformer"),
    "i2v_channels": (lambda r: _config(r, in_channels=8), "image-to-video transformer"),
    # the weights: every one present, none extra, float dtypes, finite values, readable files
    "missing_key": (lambda r: _weights(r, lambda s: s.pop(_first(s))), "the weights lack"),
    "extra_key": (lambda r: _weights(r, lambda s: s.update({"blocks.9.mystery.weight": torch.zeros(2)})),
                  "blocks.9.mystery.weight"),
    "wrong_shape": (lambda r: _weights(r, lambda s: s.update({_first(s): torch.zeros(3)})), "has shape [3]"),
    "int8": (lambda r: _weights(r, lambda s: s.update({_first(s): s[_first(s)].to(torch.int8)})), "is I8; accepted"),
    "nan": (lambda r: _weights(r, lambda s: s[_first(s)].fill_(float("nan"))), "NaN or infinite"),
    "inf": (lambda r: _weights(r, lambda s: s[_first(s)].fill_(float("inf"))), "NaN or infinite"),
    "garbage_weights": (lambda r: (r / WEIGHTS).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage"),
                        "not a readable safetensors file"),
    "no_weights": (lambda r: (r / WEIGHTS).unlink(), "no .safetensors weights"),
    # the scheduler
    "scheduler_list": (lambda r: _scheduler(r, "[1, 2]"), "accepted: a scheduler config"),
    "scheduler_garbage": (lambda r: _scheduler(r, "{not json"), "is not valid JSON"),
    "scheduler_class": (lambda r: _scheduler(r, '{"_class_name": "DDIMScheduler"}'), "describes a DDIMScheduler"),
    "scheduler_shift_text": (lambda r: _scheduler(r, '{"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": "5"}'),
                             "shift = '5'; accepted"),
    "scheduler_shift_nan": (lambda r: _scheduler(r, '{"_class_name": "UniPCMultistepScheduler", "flow_shift": NaN}'),
                            "flow_shift = nan; accepted"),
    "scheduler_steps": (lambda r: _scheduler(r, '{"_class_name": "UniPCMultistepScheduler", "num_train_timesteps": 0}'),
                        "num_train_timesteps = 0; accepted"),
    # the pipeline's other parts
    "wan22_expert": (lambda r: shutil.copytree(r / "transformer", r / "transformer_2"), "two-expert pipeline"),
    "wan22_index": (lambda r: (r / "model_index.json").write_text('{"boundary_ratio": 0.875}'), "two-expert pipeline"),
    "image_encoder": (lambda r: (r / "image_encoder").mkdir(), "image-to-video pipeline"),
    "index_garbage": (lambda r: (r / "model_index.json").write_text("{"), "not a readable JSON"),
    "vae_garbage": (lambda r: (r / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"junk"),
                    "cannot load the VAE"),
    "vae_nan": (lambda r: _vae_nan(r), "NaN or infinite"),
}
PROMPT_DAMAGES = {  # only read when a prompt is given
    "text_encoder_garbage": (lambda r: (r / "text_encoder" / "model.safetensors").write_bytes(b"junk"),
                             "cannot load the text encoder"),
    "text_encoder_config": (lambda r: (r / "text_encoder" / "config.json").write_text("[]"),
                            "cannot load the text encoder"),
    "tokenizer_gone": (lambda r: shutil.rmtree(r / "tokenizer"), "needs the pipeline directory's text_encoder/"),
}


def _vae_nan(root: Path) -> None:
    path = root / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(path)
    state[_first(state)].fill_(float("nan"))
    save_file(state, path)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    return save_pipeline(tmp_path_factory.mktemp("wan") / "pipe", "wan")


def _damaged(pipeline: Path, tmp_path: Path, damage) -> Path:
    root = tmp_path / "user" / "pipe"
    shutil.copytree(pipeline, root)
    damage(root)
    return root


def test_the_table_covers_config_weights_scheduler_and_pipeline():
    assert len(DAMAGES) + len(PROMPT_DAMAGES) >= 35


@pytest.mark.parametrize("name", list(DAMAGES) + list(PROMPT_DAMAGES))
def test_a_damaged_diffusers_directory_is_refused_in_one_line_and_nothing_changes(name, pipeline, tmp_path, capsys,
                                                                                  monkeypatch):
    damage, expected = {**DAMAGES, **PROMPT_DAMAGES}[name]
    root = _damaged(pipeline, tmp_path, damage)
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    prompt = ["--prompt", "a red car"] if name in PROMPT_DAMAGES else []
    code = main(["run", "--model", f"diffusers:{root}", "--layer", "0", "--context", "2", "--frames", "2", "--steps", "2",
                 "--quiet", "--out", "run", *prompt])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err and "newly initialized" not in err, err
    assert expected in err, err
    assert _tree(tmp_path) == before
    if name not in PROMPT_DAMAGES:
        with pytest.raises(CheckpointError, match=expected.split(";")[0][:30].replace("[", r"\[").replace("(", r"\(")):
            load_causal_wan(root)


def test_a_latent_grid_beyond_the_rope_table_is_refused(pipeline, tmp_path, capsys):
    # rope_max_seq_len 32 rows and columns; 2x2 patches: 66 latent columns make 33 token columns
    assert main(["run", "--model", f"diffusers:{pipeline}", "--latent-size", "8x66", "--out", str(tmp_path / "r")]) == 2
    assert "beyond the model's RoPE table" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def _pngs(folder: Path, sizes: list[tuple[int, int]]) -> Path:
    from PIL import Image

    folder.mkdir(parents=True)
    for i, (h, w) in enumerate(sizes):
        Image.new("RGB", (w, h), (i * 40, 0, 0)).save(folder / f"{i:02d}.png")
    return folder


def _bomb(folder: Path) -> Path:
    """A PNG whose header says 100,000 x 100,000 pixels: refused from the header, never decoded."""
    import struct
    import zlib

    folder.mkdir(parents=True)
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))  # noqa: E731
    for i in range(5):
        (folder / f"{i:02d}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return folder


CONTEXTS = {  # a context video the user gives -> what the one line says (5 frames of 16 x 16 pixels are needed)
    "corrupt_png": (lambda d: (_pngs(d, [(16, 16)] * 5) / "02.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage"),
                    "02.png cannot be decoded as an image"),
    "text_as_png": (lambda d: (_pngs(d, [(16, 16)] * 5) / "00.png").write_text("hello"), "cannot be decoded as an image"),
    "directory_named_png": (lambda d: (_pngs(d, [(16, 16)] * 5), (d / "01.png").unlink(), (d / "01.png").mkdir()),
                            "01.png is not a file"),
    "bomb": (lambda d: _bomb(d), "accepted: frames of at most"),
    "mixed_sizes": (lambda d: _pngs(d, [(16, 16), (16, 16), (20, 16), (16, 16), (16, 16)]),
                    "02.png is 16x20 but 00.png is 16x16; accepted: frames of one size"),
    "too_few": (lambda d: _pngs(d, [(16, 16)] * 3), "has 3 frames; the context needs 5"),
    "no_images": (lambda d: (d.mkdir(parents=True), (d / "notes.txt").write_text("x")), "holds no images"),
    "garbage_video": (lambda d: (d.parent.mkdir(parents=True, exist_ok=True), d.with_suffix(".mp4").write_bytes(b"junk")),
                      "cannot read"),
}


@pytest.mark.parametrize("name", CONTEXTS)
def test_a_bad_context_video_is_refused_in_one_line_and_nothing_changes(name, pipeline, tmp_path, capsys, monkeypatch):
    make, expected = CONTEXTS[name]
    where = tmp_path / "user" / "clip"
    make(where)
    if name == "garbage_video":
        where = where.with_suffix(".mp4")
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    code = main(["run", "--model", f"diffusers:{pipeline}", "--layer", "0", "--context", "3", "--frames", "1",
                 "--steps", "1", "--quiet", "--context-video", str(where), "--out", "run"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert expected in err, err
    assert _tree(tmp_path) == before
    from scd.wan.pipeline import ContextVideoError, read_video

    with pytest.raises(ContextVideoError):
        read_video(where, 5, (16, 16))


@pytest.mark.parametrize("args", [(None, 5, (16, 16)), ("x", 0, (16, 16)), ("x", -1, (16, 16)), ("x", 2.5, (16, 16)),
                                  ("x", True, (16, 16)), ("x", 5, (0, 16)), ("x", 5, (16,)), ("x", 5, "16x16")])
def test_read_video_refuses_bad_arguments(args):
    from scd.wan.pipeline import ContextVideoError, read_video

    with pytest.raises(ContextVideoError, match="accepted"):
        read_video(*args)


WAN_14B = {"_class_name": "WanTransformer3DModel", "num_layers": 40, "num_attention_heads": 40, "attention_head_dim": 128,
           "ffn_dim": 13824, "in_channels": 16, "out_channels": 16, "text_dim": 4096, "patch_size": [1, 2, 2]}


def _wan_14b_directory(tmp_path: Path) -> tuple[Path, dict]:
    """A pipeline directory holding a Wan-2.1-14B-sized transformer config (40 blocks, 40 heads x 128), no weights."""
    root = tmp_path / "krea"
    (root / "transformer").mkdir(parents=True)
    (root / "transformer" / "config.json").write_text(json.dumps(WAN_14B))
    return root, dict(WAN_14B)


def test_the_memory_is_estimated_from_the_config_before_loading(tmp_path, monkeypatch, capsys):
    """A Wan-2.1-14B-sized config (40 blocks, 40 heads x 128 = width 5120) is estimated at its real width, layers and
    tokens, and refused before any weight is read when it cannot fit; the tiny one at width 24."""
    import argparse

    import probe_cli.probing as probing
    import scd.wan.checks

    root, config = _wan_14b_directory(tmp_path)
    monkeypatch.setattr(scd.wan.checks, "check_weights", lambda directory, config: 0)  # no 14B weights on this disk
    args = argparse.Namespace(latent_size=(60, 104), frames_per_block=3, fps=None, context=3, frames=18, prompt=None,
                              negative_prompt=None, dtype="bfloat16", guidance_scale=None, steps=50, mode="full",
                              pca_tokens=256, window=None, sink_frames=0, rope="absolute", cache_policy=CachePolicy(),
                              bands=3, timesteps=None, warp=False, shift=None, sampler="ode", seed=0)
    shape = probing.diffusers_shape(f"diffusers:{root}", args)
    assert shape == {"width": 5120, "depth": 40, "heads": 40, "tokens": 30 * 52, "frame_pixels": 3 * 64 * 60 * 104,
                     "weights": 0, "text_encoder": 0, "chunk": 3, "max_frames": 1024}
    by_hand = int(4.5 * 40 * 18 * 50 * (1560 * 5120 * 4 + 16 * 50))  # every token of 40 layers, float32, x the peak
    assert probing.feature_bytes(shape, 40, 18, 50, "full") == by_hand
    spec = argparse.Namespace(layers=tuple(range(40)), capture=("features",), mode="full", pca_tokens=256, bands=3)
    assert probing._estimate(shape, spec, args, 21) > by_hand
    before = _tree(tmp_path)
    assert main(["run", "--model", f"diffusers:{root}", "--layers", "all", "--latent-size", "60x104", "--context", "3",
                 "--frames", "18", "--frames-per-block", "3", "--mode", "full", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "GiB, but" in err and len(err.strip().splitlines()) == 1, err
    assert _tree(tmp_path) == before


def test_a_checkpoint_larger_than_memory_is_described_from_its_header_without_mapping_it(tmp_path, monkeypatch, capsys):
    """A 14B transformer's single 28 GB safetensors file (sparse here: a real header, its data never written) is
    checked from the header alone and refused with the memory estimate; safetensors' reader, which maps the whole
    file, is never called."""
    import safetensors
    import torch

    import scd.wan.checks
    from scd.wan.checks import safetensors_header

    root, config = _wan_14b_directory(tmp_path)
    import diffusers

    with torch.device("meta"):
        shapes = {k: list(v.shape) for k, v in diffusers.WanTransformer3DModel(
            **scd.wan.checks._constructor_kwargs(config)).state_dict().items()}
    header, offset = {}, 0
    for key, shape in shapes.items():
        size = 2 * math.prod(shape)
        header[key] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    weights = root / "transformer" / "diffusion_pytorch_model.safetensors"
    with open(weights, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text)
        f.truncate(8 + len(text) + offset)  # sparse: no disk, no memory
    assert offset > 25 * 2**30
    assert safetensors_header(weights)["blocks.0.attn1.to_q.weight"] == ((5120, 5120), "BF16")

    def mapped(*args, **kwargs):
        raise AssertionError("safe_open maps the whole file")
    monkeypatch.setattr(safetensors, "safe_open", mapped)
    before = file_tree(tmp_path, contents=False)  # a stat fingerprint: reading 28 GB of zeros is what is avoided
    assert main(["run", "--model", f"diffusers:{root}", "--layers", "all", "--latent-size", "60x104", "--context", "3",
                 "--frames", "18", "--frames-per-block", "3", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "GiB, but" in err and len(err.strip().splitlines()) == 1, err
    assert file_tree(tmp_path, contents=False) == before
    with open(weights, "r+b") as f:  # a truncated file: its offsets no longer tile it
        f.truncate(8 + len(text) + offset - 1)
    with pytest.raises(CheckpointError, match="do not tile"):
        safetensors_header(weights)


def test_the_attention_estimate_counts_the_pooled_map_of_the_bands_asked_for():
    """The pooled map holds bands x (frames x bands) floats per (layer, frame, step, head): at 64 bands the estimate
    grows by exactly that over 3 bands (it once assumed 3 whatever --bands said, 455x too small at 64)."""
    import argparse

    import probe_cli.probing as probing

    shape = {"width": 128, "depth": 30, "heads": 4, "tokens": 64, "frame_pixels": 3 * 32 * 32, "weights": 0}
    args = {bands: argparse.Namespace(dtype="float32", guidance_scale=None, window=None, frames=8, steps=50,
                                      mode="full", pca_tokens=256, bands=bands) for bands in (3, 64)}
    spec = {bands: argparse.Namespace(layers=tuple(range(30)), capture=("attention",), mode="full", pca_tokens=256,
                                      bands=bands) for bands in (3, 64)}
    grown = probing._estimate(shape, spec[64], args[64], 12) - probing._estimate(shape, spec[3], args[3], 12)
    assert grown == 30 * 8 * 50 * 4 * 12 * 4 * (64**2 - 3**2)
