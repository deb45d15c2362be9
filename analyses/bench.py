"""`probe bench`: SCD against the baseline on speed and quality, measured side by side in one process.

Speed: `generate` runs of both models, interleaved (the order alternates every repeat) and repeated,
at each (denoising steps, context frames) setting. Frame f is done when the sampler announces its
cache-writing pass (`callback(f, None, 0)`), so time to first frame covers the context's prefill and
the first frame's denoising, and the per-frame latency is the time between two frames being done
(the steady state of streaming). Peak memory is the rise of the resident set during a run on the
CPU (glibc asked to serve blocks from mmap and to trim its heap before each run, so memory freed
by an earlier run is neither counted nor silently reused) and
`torch.cuda.max_memory_allocated` on a GPU. Next to every measured ratio stands the analytic FLOP
ratio of the same setting (`scd.flops`).

Quality: PSNR and SSIM of the generated frames against ground truth on val clips (`scd.evaluate`),
for one sample and for the best of several seeds per clip, as the paper's protocol.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import itertools
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from analyses.errors import AnalysisError
from scd.data import VideoBenchmark
from scd.evaluate import validate
from scd.flops import generation_flops
from scd.progress import progress as progress_bar
from scd.sampling import generate

SETTINGS = ((50, 4), (50, 16), (4, 4), (4, 16))  # (denoising steps, context frames)

# How the summary tables' columns are headed, in the markdown page and in the report.
SPEED_COLUMNS = {"model": "model", "steps": "steps", "context": "context", "first_frame_s": "first frame (s)",
                 "latency_median_s": "latency median (s)", "latency_p90_s": "latency p90 (s)",
                 "frames_per_s": "frames/s", "peak_mib": "peak memory (MiB)",
                 "first_frame_gflop": "GFLOP to first frame", "per_frame_gflop": "GFLOP / frame"}
RATIO_COLUMNS = {"steps": "steps", "context": "context", "frames_per_s_ratio": "frames/s ratio (measured)",
                 "flop_ratio": "FLOP ratio (analytic)", "measured_over_analytic": "measured / analytic",
                 "first_frame_speedup": "first-frame speed-up", "first_frame_flop_ratio": "first-frame FLOP ratio",
                 "memory_ratio": "memory ratio"}
QUALITY_COLUMNS = {"model": "model", "psnr": "PSNR (dB)", "ssim": "SSIM", "psnr_best": "PSNR best-of-k",
                   "ssim_best": "SSIM best-of-k", "samples": "k", "clips": "clips"}


def _prefer_mmap() -> None:
    """Have glibc serve blocks >= 16 KiB from mmap, so the resident set follows the memory actually held."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-3, 16384)  # M_MMAP_THRESHOLD


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


@contextlib.contextmanager
def _peak_memory(device: torch.device, out: dict) -> Iterator[None]:
    """Sets out["peak_mib"]: the memory a block of code added at its peak, on `device`."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        yield
        torch.cuda.synchronize(device)
        out["peak_mib"] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        return
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # hand freed heap pages back, or the run reuses them unseen
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM back to the current resident set
        before = _rss("VmRSS")
    except OSError:  # not Linux: no peak to read
        before = None
    yield
    out["peak_mib"] = (_rss("VmHWM") - before) / 2**20 if before is not None else float("nan")


def context_frames(model: nn.Module, frames: int) -> torch.Tensor:
    """What a timed run starts from: val clip 0 of the benchmark for the RGB models it trains, seeded Gaussian
    latents for latent sizes (e.g. "wan1.3b": 16 channels, 60x104). [frames, C, H, W]."""
    channels, height, width = model.config.frame_shape
    if channels == 3 and height == width:
        return VideoBenchmark("val", frames=frames, size=height).clip(0)
    return torch.randn(frames, channels, height, width, generator=torch.Generator().manual_seed(0))


def time_generation(model: nn.Module, context: torch.Tensor, frames: int, steps: int,
                    device: str | torch.device = "cpu", seed: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """One timed `generate` run: time to first frame, the frame-to-frame latencies, peak memory."""
    device = torch.device(device)
    T, done = context.shape[0], {}

    def on_step(frame: int, step: int | None, timestep: float) -> None:
        if step is None and frame >= T:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            done[frame] = time.perf_counter()

    out: dict = {}
    with _peak_memory(device, out):
        start = time.perf_counter()
        generate(model, context, frames, steps=steps, seed=seed, device=device, dtype=dtype, callback=on_step)
    finished = [done[f] for f in range(T, T + frames)]
    return {"first_frame_s": finished[0] - start, "latencies_s": np.diff(finished).tolist(), **out}


def speed_table(models: dict[str, nn.Module], settings: Iterable[tuple[int, int]] = SETTINGS, frames: int = 8,
                repeats: int = 3, device: str | torch.device = "cpu", progress: bool = True,
                dtype: torch.dtype = torch.float32) -> pd.DataFrame:
    """Tidy table, one row per (model, steps, context, repeat, frame): time to first frame, latency, memory."""
    if frames < 2:
        raise AnalysisError(f"frames must be >= 2 to measure a frame-to-frame latency, got {frames}")
    _prefer_mmap()
    settings = list(settings)
    shapes = {m.config.frame_shape for m in models.values()}
    if len(shapes) != 1:
        raise AnalysisError(f"the models compared must generate frames of one shape, got {sorted(shapes)}")
    first = next(iter(models.values()))
    clips = {context: context_frames(first, context) for _, context in settings}
    for (steps, context), model in itertools.product(settings, models.values()):  # warm-up, untimed
        generate(model, clips[context], 1, steps=min(steps, 2), device=device, dtype=dtype)
    rows = []
    runs = [(r, s) for r in range(repeats) for s in settings]
    names = list(models)
    for repeat, (steps, context) in progress_bar(runs, desc="bench speed", disable=not progress):
        for name in names if repeat % 2 == 0 else names[::-1]:
            timing = time_generation(models[name], clips[context], frames, steps, device, dtype=dtype)
            for k, latency in enumerate(timing["latencies_s"]):
                rows.append({"model": name, "steps": steps, "context": context, "repeat": repeat, "frame": k + 1,
                             "first_frame_s": timing["first_frame_s"], "latency_s": latency,
                             "peak_mib": timing["peak_mib"]})
    return pd.DataFrame(rows)


def speed_summary(speed: pd.DataFrame, configs: dict[str, dict], frames: int) -> pd.DataFrame:
    """Per (model, steps, context): time to first frame (median over repeats), latency median and p90,
    frames/s (frames over the summed latencies), peak memory (max), and the analytic forward GFLOPs."""
    rows = []
    for (name, steps, context), group in speed.groupby(["model", "steps", "context"], sort=False):
        flops = generation_flops(configs[name], context, frames, steps)
        rows.append({
            "model": name, "steps": steps, "context": context,
            "first_frame_s": float(group.groupby("repeat").first_frame_s.first().median()),
            "latency_median_s": float(group.latency_s.median()),
            "latency_p90_s": float(group.latency_s.quantile(0.9)),
            "frames_per_s": float(len(group) / group.latency_s.sum()),
            "peak_mib": float(group.peak_mib.max()),
            "first_frame_gflop": flops[0] / 1e9,
            "per_frame_gflop": float(np.mean(flops[1:])) / 1e9,
        })
    return pd.DataFrame(rows)


def ratio_table(summary: pd.DataFrame, baseline: str, other: str) -> pd.DataFrame:
    """Per setting: measured `other`/`baseline` speed-ups next to the analytic FLOP ratios."""
    rows = []
    for (steps, context), group in summary.groupby(["steps", "context"], sort=False):
        b, o = group.set_index("model").loc[baseline], group.set_index("model").loc[other]
        fps, analytic = o.frames_per_s / b.frames_per_s, b.per_frame_gflop / o.per_frame_gflop
        rows.append({"steps": steps, "context": context, "frames_per_s_ratio": fps, "flop_ratio": analytic,
                     "measured_over_analytic": fps / analytic,
                     "first_frame_speedup": b.first_frame_s / o.first_frame_s,
                     "first_frame_flop_ratio": b.first_frame_gflop / o.first_frame_gflop,
                     "memory_ratio": o.peak_mib / b.peak_mib if b.peak_mib > 0 else float("nan")})
    return pd.DataFrame(rows)


def quality_table(models: dict[str, nn.Module], clips: int = 32, samples: int = 4, steps: int = 50, context: int = 4,
                  frames: int = 4, device: str | torch.device = "cpu", progress: bool = True) -> pd.DataFrame:
    """Tidy table (model, sample, clip, frame, psnr, ssim) on val clips 0..clips-1; sample k uses seeds from
    1000 k. The trivial predictor "copy last frame" is included once, as a floor."""
    tables = []
    for sample, (name, model) in itertools.product(range(samples), models.items()):
        table = validate(model, clips=clips, context=context, frames=frames, steps=steps, seed=1000 * sample,
                         device=device, progress=progress)
        keep = table.method == "model"
        if sample == 0 and name == next(iter(models)):
            keep |= table.method == "copy last frame"
        table = table[keep]
        table = table.assign(model=np.where(table.method == "model", name, table.method), sample=sample)
        tables.append(table.drop(columns="method"))
    return pd.concat(tables, ignore_index=True)[["model", "sample", "clip", "frame", "psnr", "ssim"]]


def quality_summary(quality: pd.DataFrame) -> pd.DataFrame:
    """Per model: mean PSNR / SSIM of sample 0, and best of the samples per clip (each metric on its own); no rows
    where quality was not measured (random weights)."""
    rows = []
    if quality.empty:
        return pd.DataFrame(columns=list(QUALITY_COLUMNS))
    for name, group in quality.groupby("model", sort=False):
        per_clip = group.groupby(["sample", "clip"])[["psnr", "ssim"]].mean()
        best = per_clip.groupby("clip").max()
        rows.append({"model": name, "samples": int(group["sample"].nunique()), "clips": int(group["clip"].nunique()),
                     "psnr": float(per_clip.loc[0].psnr.mean()), "ssim": float(per_clip.loc[0].ssim.mean()),
                     "psnr_best": float(best.psnr.mean()), "ssim_best": float(best.ssim.mean())})
    return pd.DataFrame(rows)


# The paper's speed figures at scale, each on one H100 (the paper, arXiv 2602.10095: its text-to-video section).
PAPER_SPEED = pd.DataFrame([
    ("SCD 1.6B (25 + 10 blocks, 480p, distilled)", 4, 11.1, 0.29),
    ("Self-Forcing, frame-wise (Wan-2.1-1.3B)", 4, 8.9, 0.45),
    ("Self-Forcing, chunk-wise", 4, 17.0, float("nan")),
    ("CausVid (3 frames per block)", 4, 9.4, 1.3),
], columns=["model (the paper)", "steps", "frames/s", "first frame (s)"])


def markdown(speed: pd.DataFrame, ratios: pd.DataFrame, quality: pd.DataFrame, info: dict) -> str:
    """The benchmark as a markdown page."""
    if quality.empty:
        quality_lines = ["## Quality", "", "Not measured: " + info.get("quality", "no quality runs") + ".", ""]
    else:
        quality_lines = [
            "## Quality", "",
            f"{info['clips']} val clips, {info['quality_context']} context + {info['quality_frames']} generated "
            f"frames, {info['quality_steps']} steps; best-of-k takes each clip's best sample per metric.", "",
            quality[list(QUALITY_COLUMNS)].rename(columns=QUALITY_COLUMNS).to_markdown(index=False, floatfmt=".3f"), ""]
    paper = []
    if info.get("size"):
        paper = ["## The paper's figures (one H100)", "",
                 PAPER_SPEED.to_markdown(index=False, floatfmt=("", "g", ".1f", ".2f")), "",
                 "The paper's goal for SCD at this size: 11.1 frames/s or more at 4 steps. Ours are random weights of "
                 "the same shapes (the speed of a trained model is the same); the paper's SCD starts its decoder "
                 "from Wan's first and last 5 blocks, ours has the same 10 blocks.", ""]
    lines = [f"# {info['other']} vs {info['baseline']}", "",
             f"`{info['command']}`", "",
             f"Machine: {info['machine']}; device {info['device']}. {info['frames']} generated frames per run, "
             f"{info['repeats']} repeats, runs interleaved. Latency: time between two frames being done.", "",
             "## Speed", "", speed.rename(columns=SPEED_COLUMNS).to_markdown(index=False, floatfmt=".3f"), "",
             f"## {info['other']} / {info['baseline']}", "",
             ratios.rename(columns=RATIO_COLUMNS).to_markdown(index=False, floatfmt=("g", "g") + (".2f",) * 6), "",
             *paper, *quality_lines]
    return "\n".join(lines)


def write_bench(out: str | Path, speed: pd.DataFrame, quality: pd.DataFrame, info: dict, force: bool = False) -> Path:
    """Write speed.parquet, quality.parquet, bench.json and bench.md into `out` (via a temporary sibling)."""
    from scd.files import atomic_directory, signature

    info = {**signature("bench"), **info}
    with atomic_directory(out, "bench", force) as tmp:
        speed.to_parquet(tmp / "speed.parquet", index=False)
        quality.to_parquet(tmp / "quality.parquet", index=False)
        (tmp / "bench.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
        summary = speed_summary(speed, info["configs"], info["frames"])
        ratios = ratio_table(summary, info["baseline"], info["other"])
        (tmp / "bench.md").write_text(markdown(summary, ratios, quality_summary(quality), info))
    return Path(out)


def load_bench(path: str | Path) -> dict:
    """A bench directory's tables: info, speed summary, ratios, quality summary (ValueError if incomplete)."""
    path = Path(path)
    missing = [n for n in ("speed.parquet", "quality.parquet", "bench.json") if not (path / n).is_file()]
    if missing:
        raise AnalysisError(f"{path} is not a bench directory written by probe bench (missing {', '.join(missing)})")
    info = json.loads((path / "bench.json").read_text())
    summary = speed_summary(pd.read_parquet(path / "speed.parquet"), info["configs"], info["frames"])
    return {"info": info, "speed": summary, "ratios": ratio_table(summary, info["baseline"], info["other"]),
            "quality": quality_summary(pd.read_parquet(path / "quality.parquet"))}
