"""One `Recording` for a live probe and a loaded run: every public method gives equal values on both."""

import ast
import inspect
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import probes
from analyses import claims, figures, paper_figures
from probes import Probe, Recording, load_run, record
from scd import generate

README = Path(__file__).resolve().parents[2] / "README.md"


def _calls(recording: Recording, name: str):
    """Every way the public member `name` can be asked: per layer, per recorded frame (and all frames), per kind."""
    member = inspect.getattr_static(Recording, name)
    if isinstance(member, property):
        yield name, getattr(recording, name)
        return
    parameters = inspect.signature(member).parameters
    layers = range(recording.depth) if name == "role" else recording.layers
    if name == "attention_text_share":  # blocks with cross-attention only (Wan: tests/probes/test_text_share.py)
        layers = recording.text_share_layers
    frames = [None, *recording.frames] if "frame" in parameters else [None]
    kinds = ["token_cosine", "centred_cosine", "cka"] if "kind" in parameters else [None]
    for layer in layers if "layer" in parameters else [None]:
        for frame in frames:
            for kind in kinds:
                arguments = {k: v for k, v in (("layer", layer), ("frame", frame), ("kind", kind)) if v is not None}
                yield (name, arguments), getattr(recording, name)(**arguments)


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, pd.DataFrame):
        return a.equals(b)
    if isinstance(a, tuple | list) and a and isinstance(a[0], np.ndarray):
        return all(np.array_equal(x, y) and x.dtype == y.dtype for x, y in zip(a, b, strict=True))
    if isinstance(a, list) and a and isinstance(a[0], Recording):
        return len(a) == len(b)
    return a == b


PUBLIC = sorted(n for n in dir(Recording) if not n.startswith("_") and n not in ("save", "path", "manifest"))


@pytest.mark.parametrize("mode", ["full", "stream"])
def test_a_live_recording_and_its_saved_copy_agree_on_every_public_method(tiny_model, tmp_path, mode):
    clip = torch.rand(5, 3, 16, 16) * 2 - 1
    with Probe(tiny_model, [0, 2, 3], mode=mode, pca_tokens=6) as live:
        generate(tiny_model, clip[:3], 2, steps=3, seed=1)
    loaded = load_run(live.save(tmp_path / "run", ground_truth=clip, clip=7, seed=1))
    assert isinstance(live, Recording) and isinstance(loaded, Recording)
    asked = 0
    for name in PUBLIC:
        for (key, value), (_, again) in zip(_calls(live, name), _calls(loaded, name), strict=True):
            assert _equal(value, again), f"{key}: live and loaded differ"
            asked += 1
    assert asked > 80  # every layer x frame x kind of every method
    assert {k: v for k, v in live.manifest.items()} == {k: v for k, v in loaded.manifest.items()
                                                          if k not in ("format", "files", "versions", "git_revision",
                                                                       "complete")}


def test_the_public_spelling_is_the_one_the_issue_names():
    for name in ("features", "gram", "token_cosine", "attention", "attention_map", "metrics", "layers", "frames",
                 "steps", "depth", "role", "video", "save"):
        assert hasattr(Recording, name), name


def test_frames_are_addressed_by_video_frame_number(tiny_model):
    clip = torch.rand(5, 3, 16, 16) * 2 - 1
    with Probe(tiny_model, [1]) as live:
        generate(tiny_model, clip[:3], 2, steps=3, seed=0)
    assert live.frames == [3, 4]
    assert torch.equal(live.token_cosine(1, frame=4), live.token_cosine(1)[1])
    with pytest.raises(ValueError, match=r"frame 0 was not recorded; recorded frames: 3, 4"):
        live.token_cosine(1, frame=0)


def test_analyses_and_figures_take_a_live_recording_without_saving(tiny_model, tmp_path):
    clip = torch.rand(6, 3, 16, 16) * 2 - 1
    with Probe(tiny_model, "all") as live:
        generate(tiny_model, clip[:4], 2, steps=4, seed=0)
    loaded = load_run(live.save(tmp_path / "run"))
    for draw in (figures.similarity_heatmaps, figures.attention_vs_depth, paper_figures.attention_maps):
        argument = {"run": live} if draw is not figures.attention_vs_depth else {"runs": {"live": live}}
        draw(**argument)
    assert [(c.measured, c.verdict) for c in claims.evaluate(live)] == [(c.measured, c.verdict) for c in claims.evaluate(loaded)]


def test_a_probe_refuses_to_be_read_before_it_recorded(tiny_model):
    probe = Probe(tiny_model, [1])
    with pytest.raises(probes.ProbeError, match="nothing was recorded"):
        probe.features(1)


def test_the_readme_gets_layer_15_s_cosine_of_one_frame_in_three_statements(monkeypatch):
    """The README's snippet, run as written (with 3 steps in place of 50, for time), is at most three statements."""
    snippet = re.search(r"```python\n(import probes, scd\n.*?)```", README.read_text(), re.S).group(1)
    assert len(ast.parse(snippet).body) <= 3
    monkeypatch.setattr(probes, "record", lambda *a, **k: record(*a, **{**k, "steps": 3}))
    names: dict = {}
    exec(compile(snippet, "README.md", "exec"), names)  # noqa: S102  the README's own code
    cosine = names["cosine"]
    assert cosine.shape == (3, 3) and cosine.dtype == torch.float64
    assert torch.allclose(cosine.diagonal(), torch.ones(3, dtype=torch.float64))
