"""Property tests of the newer public API's numeric and path arguments: whatever is passed, the answer is a result
or one of the toolkit's ValueError subclasses (a one-line message naming the accepted values), never a TypeError,
an AttributeError, a plain ValueError or a crash; and a refusal leaves the directory as it was."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from probe_cli.cli import OUR_PACKAGES
from tests.wan_tiny import TINY, save_pipeline

ANY_NUMBER = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
                       st.text(max_size=4))
PATHS = st.one_of(st.none(), st.integers(), st.text(max_size=30), st.sampled_from(["", ".", "..", "/", "/proc/x", "a\0b",
                                                                                  "x" * 300, "/dev/null"]))
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def ours(error: BaseException) -> bool:
    return isinstance(error, ValueError) and type(error).__module__.split(".")[0] in OUR_PACKAGES and \
        len(str(error).splitlines()) == 1


def answer(call):
    """The call's result, or None when it refused the toolkit's way; any other exception fails the test."""
    try:
        return call()
    except Exception as e:  # noqa: BLE001
        assert ours(e), f"{type(e).__module__}.{type(e).__name__}: {e}"
        return None


@SETTINGS
@given(latent=st.one_of(st.tuples(ANY_NUMBER, ANY_NUMBER), ANY_NUMBER, st.lists(st.integers(-3, 70), max_size=3)),
       chunk=ANY_NUMBER, fps=ANY_NUMBER)
def test_geometry_answers_or_refuses(latent, chunk, fps):
    from scd.wan.causal_wan import geometry

    result = answer(lambda: geometry({**TINY, "inject_sample_info": True}, latent, chunk, fps))
    if result is not None:
        (rows, cols), k, rate = result
        assert rows * 2 == latent[0] and cols * 2 == latent[1] and 1 <= rows <= 32 and 1 <= cols <= 32
        assert isinstance(k, int) and 1 <= k <= 64 and isinstance(rate, int) and 1 <= rate <= 240


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Path:
    return save_pipeline(tmp_path_factory.mktemp("wan") / "pipe", "wan", vae=False, text=False)


@SETTINGS
@given(latent=st.one_of(st.tuples(st.integers(-2, 70), st.integers(-2, 70)), ANY_NUMBER), chunk=ANY_NUMBER,
       device=st.sampled_from(["cpu", "meta", "cuda:7", "tpu", "", None, 3]),
       dtype=st.sampled_from([torch.float32, torch.int8, torch.float64, "float32", None]))
def test_load_causal_wan_answers_or_refuses(pipeline, latent, chunk, device, dtype):
    from scd.wan.pipeline import load_causal_wan

    model = answer(lambda: load_causal_wan(pipeline, latent, frames_per_block=chunk, device=device, dtype=dtype))
    if model is not None:
        assert model.latent_size == tuple(latent) and model.tokens_per_frame == latent[0] * latent[1] // 4


@SETTINGS
@given(path=PATHS)
def test_paths_are_refused_as_paths(path, tmp_path):
    from scd.wan.convert import convert, read_weights
    from scd.wan.pipeline import load_causal_wan, read_video, scheduler_config

    os.chdir(tmp_path)
    before = sorted(Path(tmp_path).rglob("*"))
    for call in (lambda: load_causal_wan(path), lambda: read_weights(path), lambda: read_video(path, 2, (8, 8)),
                 lambda: scheduler_config(path), lambda: convert(path, tmp_path / "out")):
        assert answer(call) is None
    assert sorted(Path(tmp_path).rglob("*")) == before


@SETTINGS
@given(values=st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32), st.integers(-5, 5)),
       shape=st.sampled_from([(4, 16), (4, 15), (0, 16), (16,), (2, 4, 16)]), scale=ANY_NUMBER)
def test_embeddings_and_guidance_answer_or_refuse(pipeline, values, shape, scale):
    from scd.wan.pipeline import load_causal_wan

    model = load_causal_wan(pipeline)
    tensor = torch.full(shape, float(values))
    done = answer(lambda: model.set_prompt(tensor, None, scale) or True)
    if done:
        assert math.isfinite(float(values)) and shape == (4, 16) and model.guidance_scale == float(scale)


@SETTINGS
@given(frames=ANY_NUMBER)
def test_frame_counts_answer_or_refuse(pipeline, frames):
    from scd.wan.pipeline import load_causal_wan

    model = load_causal_wan(pipeline)
    if answer(lambda: model.check_frames(0, frames) or True):
        assert isinstance(frames, int) and 1 <= frames <= TINY["rope_max_seq_len"]


@SETTINGS
@given(heads=ANY_NUMBER, chunk=ANY_NUMBER, ema=st.sampled_from([None, True, False, 1, "yes"]))
def test_convert_numbers_answer_or_refuse(tmp_path_factory, heads, chunk, ema):
    from safetensors.torch import save_file

    from scd.wan.convert import convert
    from tests.scd.test_causal_wan import original_layout
    from tests.wan_tiny import tiny

    root = tmp_path_factory.mktemp("convert")
    save_file(original_layout(tiny("wan").state_dict()), root / "c.safetensors")
    out = answer(lambda: convert(root / "c.safetensors", root / "out", heads=heads, frames_per_block=chunk, ema=ema))
    if out is not None:
        assert heads in (None, 1, 2) and chunk is None and ema is None
    else:
        assert not (root / "out").exists()


@SETTINGS
@given(frames=st.lists(st.integers(-3, 40), max_size=4), role=st.sampled_from(["causal", "decoder", "frame-local"]),
       chunk=ANY_NUMBER)
@example(frames=[3], role="causal", chunk=2**62)  # a chunk too big to list: refused, not a crash of memory
@example(frames=[-3], role="causal", chunk=1)     # no frame before the video's first
def test_frames_visible_answers_or_refuses(frames, role, chunk):
    from analyses.sparsity import frames_visible

    seen = answer(lambda: frames_visible(frames, role, chunk))
    if seen is not None and role == "causal":
        assert all(v > f and v % chunk == 0 for v, f in zip(seen, frames, strict=True))


@SETTINGS
@given(key=st.one_of(st.text(max_size=20), st.sampled_from(["layer1/../../x", "layer1./x", "input./..", "../layer1",
                                                            "layer1.gram", "input.gram", "layer15"])))
def test_run_entry_names_never_reach_another_path(tmp_path_factory, key):
    import numpy as np

    from probes.store import write_run

    root = tmp_path_factory.mktemp("entries")
    video = np.zeros((2, 4, 4, 3), np.uint8)
    written = answer(lambda: write_run(root / "run", {"model": "x"}, features={key: torch.zeros(1)}, generated=video,
                                       ground_truth=video))
    assert sorted(p.name for p in root.iterdir()) == (["run"] if written else [])
    if written:
        assert {p.name for p in (root / "run").iterdir()} == {"manifest.json", "features.safetensors",
                                                              "attention.safetensors", "metrics.parquet", "video.npz"}


@SETTINGS
@given(path=PATHS)
def test_output_paths_answer_or_refuse(path, tmp_path):
    """Every writer of the public API either writes (a path that can name a new file) or refuses the toolkit's way and
    writes nothing."""
    import shutil
    from unittest import mock

    import numpy as np

    from analyses.report import write_report
    from probes.store import write_run
    from scd.evaluate import export_checkpoint
    from scd.training.config import TrainConfig
    from scd.training.train import train

    sandbox = tmp_path / "sandbox"
    shutil.rmtree(sandbox, ignore_errors=True)
    sandbox.mkdir()
    os.chdir(sandbox)
    shipped = tmp_path / "checkpoints"  # export writes shipped checkpoints: never into the repository's own
    shipped.mkdir(exist_ok=True)
    video = np.zeros((2, 4, 4, 3), np.uint8)

    def export() -> None:
        with mock.patch("scd.evaluate.CHECKPOINT_DIR", shipped):
            export_checkpoint(path, "x")

    for call in (lambda: write_report([path], "r.html"), lambda: write_report(["r"], path),
                 lambda: write_report(path, "r.html"), lambda: train(TrainConfig(size="tiny", steps=1), path),
                 export, lambda: write_run(path, {}, generated=video, ground_truth=video)):
        before = sorted(sandbox.rglob("*"))
        if answer(call) is None:
            assert sorted(sandbox.rglob("*")) == before
        for p in sandbox.iterdir():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
