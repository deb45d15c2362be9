"""The emergence study: its training factors (textured scene, bidirectional pretraining, snapshots), the cards'
numbers against independent computations, and `probe emergence` on tiny runs (files on disk, rebuilt from cards)."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from analyses.emergence import emergence_table, read_cards, relative_ratio
from analyses.intervals import interval
from probe_cli import main
from scd.baseline import BASELINE_SIZES, CausalVideoDiffuser
from scd.data import VideoBenchmark
from scd.train import TrainConfig, TrainConfigError, flow_matching_loss, train
from tests.conftest import randomize

TINY = dict(size="tiny", batch_size=2, frames=4, warmup=1, lr=3e-3, checkpoint_every=2, threads=1, bf16=False)


def test_the_textured_scene_keeps_the_sprites_and_pans_a_tiling_background():
    plain, textured = VideoBenchmark("val", frames=6), VideoBenchmark("val", frames=6, scene="textured")
    for index in (0, 7):
        background, sprites = plain.sprites(index)
        again = textured.sprites(index)
        assert [(s.x, s.y, s.vx, s.vy, s.kind) for s in sprites] == [(s.x, s.y, s.vx, s.vy, s.kind) for s in again[1]]
        clip = textured.clip(index)
        assert torch.equal(clip, textured.clip(index)) and clip.shape == (6, 3, 32, 32)
        assert clip.min() >= -1 and clip.max() <= 1 and not torch.equal(clip, plain.clip(index))
        ground, pan, patterns = textured.textures(index, len(sprites))
        assert len(patterns) == len(sprites) and np.hypot(*pan) > 0.5  # it moves by more than half a pixel a frame
        u, v = np.meshgrid(np.arange(32) + 0.5, np.arange(32) + 0.5)
        assert np.allclose(ground(u + 32, v), ground(u, v)) and np.allclose(ground(u, v - 32), ground(u, v))  # tiles
        # where no sprite covers the pixel in frames 0 and 3, frame 3 is frame 0's texture moved by 3 pans
        py, px = np.mgrid[0:32, 0:32] + 0.5
        cover = np.zeros((32, 32))
        for s in plain.sprites(index)[1]:
            for _ in range(4):
                cover = np.maximum(cover, s.alpha(px, py))
                s.step(32, 32)
        free = cover == 0
        expected = ground(px + 3 * pan[0], py + 3 * pan[1]) * 2 - 1
        got = clip[3].permute(1, 2, 0).double().numpy()
        assert free.sum() > 100 and np.allclose(got[free], expected[free], atol=1e-5)
    with pytest.raises(ValueError, match="accepted: sprites, textured"):
        VideoBenchmark("val", scene="moon")


def test_bidirectional_attention_lets_a_frame_see_later_frames_and_causal_does_not():
    model = randomize(CausalVideoDiffuser(BASELINE_SIZES["tiny"]))
    video, t = torch.randn(1, 3, 3, 16, 16), torch.full((1, 3), 500.0)
    changed = video.clone()
    changed[:, 2] += 1.0  # only the last frame
    with torch.no_grad():
        causal = model(video, t)[:, 0], model(changed, t)[:, 0]
        both = model(video, t, bidirectional=True)[:, 0], model(changed, t, bidirectional=True)[:, 0]
        assert torch.equal(*causal)  # frame 0 cannot see frame 2 ...
        assert (both[0] - both[1]).abs().max() > 1e-3  # ... unless every frame sees the whole clip
        with pytest.raises(ValueError, match="takes no KV cache"):
            model(video, t, cache=model.new_cache(), bidirectional=True)
    cfg = TrainConfig(steps=1, **TINY)
    clips = VideoBenchmark("train", frames=4, size=16).batch(range(2))
    losses = [flow_matching_loss(model, clips, cfg, torch.Generator().manual_seed(0), bidirectional=b) for b in (0, 1)]
    assert losses[0] != losses[1]


def test_snapshots_are_the_raw_weights_at_their_steps_and_bidirectional_steps_are_checked(tmp_path):
    cfg = TrainConfig(steps=4, snapshot_every=2, bidirectional_steps=2, **TINY)
    train(cfg, tmp_path / "run", progress=False, until=2)
    first = load_file(tmp_path / "run" / "snapshots" / "step-000002.safetensors")
    state = load_file(tmp_path / "run" / "train_state.safetensors")  # the raw weights after step 2
    assert all(torch.equal(v, state[f"model.{k}"]) for k, v in first.items())
    train(cfg, tmp_path / "run", progress=False, resume=True)
    assert sorted(p.name for p in (tmp_path / "run" / "snapshots").glob("*.safetensors")) == [
        "step-000002.safetensors", "step-000004.safetensors"]
    last = load_file(tmp_path / "run" / "snapshots" / "step-000004.safetensors")
    assert not torch.equal(first["blocks.0.attn.qkv.weight"], last["blocks.0.attn.qkv.weight"])
    with pytest.raises(TrainConfigError, match="more than steps"):
        train(TrainConfig(steps=2, bidirectional_steps=3, **TINY), tmp_path / "other", progress=False)
    with pytest.raises(TrainConfigError, match="accepted: sprites or textured"):
        TrainConfig(scene="moon")
    assert not (tmp_path / "other").exists()


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Two tiny training runs (one with snapshots and bidirectional pretraining) measured by `probe emergence`."""
    root = tmp_path_factory.mktemp("emergence")
    torch.set_num_threads(1)
    train(TrainConfig(steps=2, **TINY), root / "runs" / "reference", progress=False)
    train(TrainConfig(steps=2, snapshot_every=1, bidirectional_steps=1, scene="textured", **TINY),
          root / "runs" / "variant", progress=False)
    out = root / "study"
    assert main(["emergence", str(root / "runs" / "reference"), str(root / "runs" / "variant"), "--snapshots",
                 "--clip", "0-2", "--probes", str(root / "probes"), "--out", str(out), "--quiet"]) == 0
    return root, out


def test_the_study_writes_cards_table_maps_and_curve(study):
    root, out = study
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.md", "card-reference.json", "card-reference.md", "card-variant.json", "card-variant.md",
                     "curve.png", "emergence.json", "layers.md", "maps-reference.npz", "maps-variant.npz", "maps.png",
                     "table.csv", "table.md"]
    cards = {c["name"]: c for c in read_cards(out)}
    variant = cards["variant"]
    assert [p["step"] for p in variant["over_training"]] == [1, 2] and cards["reference"]["over_training"] == []
    assert variant["probe"]["split"] == "val, textured scene" and variant["probe"]["clips"] == [0, 1, 2]
    assert variant["training"]["settings"]["scene"] == "textured"
    table = emergence_table(list(cards.values()), "reference")
    row = table.set_index("variant").loc["variant", "differs from the reference"]
    assert "bidirectional pretraining, then causal fine-tuning: 0 -> 1" in row and "textured" in row
    assert "snapshot" not in row  # where a run keeps its snapshots is not a factor
    assert (out / "table.md").read_text() == table.to_markdown(index=False) + "\n"


def test_card_numbers_match_an_independent_computation(study):
    """Quality against a hand PSNR on the stored videos; each interval is the t-interval of the per-clip values;
    the relative ratio is the geometric mean of per-clip ratios."""
    root, out = study
    from probes.store import load_run

    cards = {c["name"]: c for c in read_cards(out)}
    card = cards["variant"]
    sweep = load_run(root / "probes" / "variant")
    psnr, copy = [], []
    for item in sweep.items:
        generated, truth = (v.astype(np.float64) / 127.5 - 1 for v in item.video())
        frames = item.manifest["frames"]
        mse = [((generated[f] - truth[f]) ** 2).mean() for f in frames]
        psnr.append(np.mean([10 * math.log10(4 / m) for m in mse]))
        copy.append(np.mean([10 * math.log10(4 / ((truth[frames[0] - 1] - truth[f]) ** 2).mean()) for f in frames]))
    assert card["quality"]["model_psnr"][0] == pytest.approx(np.mean(psnr), rel=1e-6)  # torchmetrics: float32
    assert card["quality"]["copy_psnr"][0] == pytest.approx(np.mean(copy), rel=1e-6)
    deep = card["finding2"]["3"]
    values = deep["per_clip"]["per_key_ratio_all"]
    assert deep["per_key_ratio_all"] == pytest.approx(list(interval(values)), abs=1e-12)
    mine, theirs = np.array(values), np.array(cards["reference"]["finding2"]["3"]["per_clip"]["per_key_ratio_all"])
    rel = relative_ratio(card, cards["reference"], "3")
    assert rel[0] == pytest.approx(float(np.exp(np.log(mine / theirs).mean())), rel=1e-9) and rel[3] == 3
    assert rel[1] < rel[0] < rel[2]


def test_the_study_is_rebuilt_from_its_cards_alone(study, tmp_path):
    root, out = study
    import shutil

    copy = tmp_path / "study"
    shutil.copytree(out, copy)
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.suffix in (".md", ".csv", ".json")}
    assert main(["emergence", "--out", str(copy)]) == 2  # it exists: --force to rebuild
    assert main(["emergence", "--out", str(copy), "--force", "--quiet"]) == 0
    after = {p.name: p.read_bytes() for p in copy.iterdir() if p.suffix in (".md", ".csv", ".json")}
    assert after == before
    (copy / "notes.txt").write_text("mine")  # a file the toolkit did not write: the directory is no longer its own
    assert main(["emergence", "--out", str(copy), "--force"]) == 2
    assert (copy / "notes.txt").read_text() == "mine"


def test_a_damaged_card_is_refused_in_one_line(study, tmp_path, capsys):
    root, out = study
    import shutil

    copy = tmp_path / "study"
    shutil.copytree(out, copy)
    card = json.loads((copy / "card-variant.json").read_text())
    del card["finding2"]
    (copy / "card-variant.json").write_text(json.dumps(card))
    assert main(["emergence", "--out", str(copy), "--force"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is not an emergence card" in err


def test_the_report_shows_the_study_escaped_and_offline(study, tmp_path):
    root, study_dir = study
    import shutil

    from analyses.report import write_report

    out = tmp_path / "study"
    shutil.copytree(study_dir, out)
    card = json.loads((out / "card-variant.json").read_text())
    card["training"]["hardware"] = "<script>alert(1)</script>"  # whatever a card holds is escaped in the page
    (out / "card-variant.json").write_text(json.dumps(card))
    html = write_report([root / "probes" / "reference"], tmp_path / "r.html", emergence=out).read_text()
    assert "When does temporal sparsity emerge?" in html and "No variant shows finding 2" in html
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    assert main(["report", str(root / "probes" / "reference"), "--emergence", str(root), "-o",
                 str(tmp_path / "s.html")]) == 2  # not a study directory: refused, nothing written
    assert not (tmp_path / "s.html").exists()


def test_training_reads_the_scene_it_is_given(tmp_path, monkeypatch):
    import scd.train

    seen = []

    class Recording(VideoBenchmark):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append(self.scene)

    monkeypatch.setattr(scd.train, "VideoBenchmark", Recording)
    train(TrainConfig(steps=1, scene="textured", **TINY), tmp_path / "run", progress=False)
    assert seen == ["textured"] and json.loads((tmp_path / "run" / "train.json").read_text())["scene"] == "textured"
