"""What probing costs: time overhead of a Probe, and peak memory of the attention mass and of the two modes.

    python benchmarks/bench_probes.py                 # the shipped baseline; writes benchmarks/RESULTS.md
    python benchmarks/bench_probes.py --repeats 1
    python benchmarks/bench_probes.py --scale wan1.3b --device cuda --context 21 --frames 2 --steps 4 --repeats 2

1. Overhead: probed / unprobed generation time, measured interleaved in one process (each probed run
   between two unprobed ones, the settings' order rotating between rounds; the median over rounds is
   reported), for one layer and for all 30 layers with attention, in full and stream mode, with both
   backends; and the time inside the probe's own callbacks in the same run (free of the machine's drift).
2. Peak memory of `attention_mass_by_frame` for 32,760 keys (21 frames x 1,560 tokens: 480p Wan
   latents) and the 1,560 queries of one frame, 12 heads of dim 128, default chunk; next to the size
   of the full attention matrix it avoids.
3. Peak memory of a probed generation (all 30 layers, features and attention) in full vs stream mode
   at 50 and 200 steps, each in a fresh subprocess.
4. `--scale wan1.3b`: all 30 layers probed on a random Wan-1.3B-sized baseline (480p latents, 21-frame context)
   against the same generation unprobed, with peak memory: the paper's scale, for a GPU.

Peak memory is the process's resident-set high-water mark (Linux VmHWM, reset through
/proc/self/clear_refs) above what it held before the measured work; the mode children run with
glibc's MALLOC_MMAP_THRESHOLD_=16384 so that freed tensors leave the resident set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench_probes: start -->", "<!-- bench_probes: end -->"
# The probe keeps many small tensors; glibc would serve them from a heap it seldom gives back, so the
# resident-set peak would measure fragmentation (it varied 2x between identical runs). Served by mmap
# they are returned on free, and the peak follows the memory actually held.
MALLOC_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "16384"}


def _status(field: str) -> int:
    """A /proc/self/status field in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> int:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    return _status("VmRSS")


# The Probe methods that `generate` and the hooks call: their time, summed over a run, is the probe's own work.
PROBE_CALLBACKS = ("on_start", "on_step", "on_video", "_active", "_receive", "_flush", "_recorded")


@contextmanager
def clock_probe_callbacks() -> Iterator[list[float]]:
    """Time spent inside the Probe's callbacks (outermost calls only: `_flush` runs inside `on_step`), in
    seconds, accumulated in the yielded one-element list while the block runs; the methods are restored on exit."""
    from probes import Probe

    total, depth = [0.0], [0]

    def timed(method):
        def wrapper(*args, **kwargs):
            depth[0] += 1
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    total[0] += time.perf_counter() - start
        return wrapper

    originals = {name: getattr(Probe, name) for name in PROBE_CALLBACKS}
    try:
        for name, method in originals.items():
            setattr(Probe, name, timed(method))
        yield total
    finally:
        for name, method in originals.items():
            setattr(Probe, name, method)


def overhead(repeats: int, frames: int, steps: int) -> list[dict]:
    """Each probed run is timed between two unprobed runs and divided by their mean, so a machine whose speed
    drifts during the benchmark (a shared VM) cancels to first order; the settings' order rotates between
    rounds, so none always follows the same one. Besides the wall-clock ratio, the time spent inside the probe's
    own callbacks, over the same run's model time: the share of the overhead that is the probe's Python and
    reductions (hook dispatch by PyTorch is not in it), measured within one run and so free of the drift."""
    from probes import Probe
    from scd import VideoBenchmark, generate, load_model

    model = load_model("baseline")
    clip = VideoBenchmark("val", frames=4 + frames).clip(0)
    depth = len(model.blocks)
    settings = {
        "layer 15, full, hookpoints": dict(layers=[15]),
        "layer 15, stream, hookpoints": dict(layers=[15], mode="stream"),
        "layer 15, full, nnsight": dict(layers=[15], backend="nnsight"),
        f"all {depth} layers, full, hookpoints": dict(layers="all"),
        f"all {depth} layers, stream, hookpoints": dict(layers="all", mode="stream"),
        f"all {depth} layers, stream, nnsight": dict(layers="all", mode="stream", backend="nnsight"),
    }
    reference = generate(model, clip[:4], frames, steps=steps)  # warm-up

    def unprobed() -> float:
        start = time.perf_counter()
        video = generate(model, clip[:4], frames, steps=steps)
        seconds = time.perf_counter() - start
        assert torch.equal(video, reference), "two unprobed generations differ"
        return seconds

    def probed(name: str) -> tuple[float, float]:
        with clock_probe_callbacks() as inside:
            start = time.perf_counter()
            with Probe(model, **settings[name]) as probe:
                video = generate(model, clip[:4], frames, steps=steps)
            probe._recorded()  # builds the live recording: the reductions a run writes, so their cost is counted
            seconds = time.perf_counter() - start
        assert torch.equal(video, reference), f"{name} changed the generated video"
        return seconds, inside[0]

    names = list(settings)
    plain: list[float] = []
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in names}  # (probed, unprobed, inside)
    for r in range(repeats):
        before = unprobed()
        plain.append(before)
        for name in names[r % len(names):] + names[: r % len(names)]:
            seconds, inside = probed(name)
            after = unprobed()
            plain.append(after)
            runs[name].append((seconds, (before + after) / 2, inside))
            before = after
    rows = [{"setting": "unprobed", "seconds": statistics.median(plain), "ratio": 1.0, "interval": (1.0, 1.0),
             "rounds": [], "probe_share": 0.0}]
    for name, triples in runs.items():
        ratios = [p / u for p, u, _ in triples]
        rows.append({"setting": name, "seconds": statistics.median(p for p, _, _ in triples),
                     "ratio": statistics.fmean(ratios), "interval": _t_interval(ratios),
                     "median": statistics.median(ratios), "rounds": ratios,
                     "probe_share": statistics.median(i / (p - i) for p, _, i in triples)})
    return rows


def _t_interval(values: list[float]) -> tuple[float, float]:
    """95% t-interval of the mean (neighbouring rounds share an unprobed run, so it is slightly narrow)."""
    from scipy import stats

    if len(values) < 2:
        return float("nan"), float("nan")
    mean, sem = statistics.fmean(values), statistics.stdev(values) / len(values) ** 0.5
    half = float(stats.t.ppf(0.975, len(values) - 1)) * sem
    return mean - half, mean + half


def overhead_at_scale(size: str, device: str, latent: tuple[int, int], context: int, frames: int, steps: int,
                      repeats: int) -> dict:
    """`probe run --size SIZE --layers all` against the same generation unprobed, interleaved, on a random model at
    the paper's scale; peak accelerator memory of each (CUDA), or the resident-set peak (CPU)."""
    from probes import Probe
    from scd import generate
    from scd.zoo import random_model

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = random_model("baseline", size, device, dtype, frame_size=latent[0], frame_width=latent[1])
    clip = torch.randn(context, *model.config.frame_shape, generator=torch.Generator().manual_seed(0))
    cuda = device.startswith("cuda")

    def one(probed: bool) -> tuple[float, int]:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        else:
            before = _reset_peak()
        start = time.perf_counter()
        if probed:
            with Probe(model, "all") as probe:
                generate(model, clip, frames, steps=steps, device=device, dtype=dtype)
            probe._recorded()  # builds the live recording
        else:
            generate(model, clip, frames, steps=steps, device=device, dtype=dtype)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        peak = (torch.cuda.max_memory_allocated() if cuda else _status("VmHWM")) - before
        return seconds, peak

    generate(model, clip, 1, steps=1, device=device, dtype=dtype)  # warm-up
    runs = {False: [], True: []}
    for _ in range(repeats):
        for probed in (False, True):
            runs[probed].append(one(probed))
    plain, probed = (statistics.median(t for t, _ in runs[k]) for k in (False, True))
    return {"size": size, "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
            "latent": latent, "tokens": model.config.tokens_per_frame, "context": context, "frames": frames,
            "steps": steps, "dtype": str(dtype).removeprefix("torch."), "unprobed_s": plain, "probed_s": probed,
            "ratio": probed / plain, "unprobed_peak": max(m for _, m in runs[False]),
            "probed_peak": max(m for _, m in runs[True])}


def attention_memory(keys: int = 32760, queries: int = 1560, heads: int = 12, head_dim: int = 128) -> dict:
    from probes.attention import SCORES_BUDGET, attention_mass_by_frame

    g = torch.Generator().manual_seed(0)
    frames = keys // queries
    q = torch.randn(1, queries, heads, head_dim, generator=g)
    k = torch.randn(1, keys, heads, head_dim, generator=g)
    key_frames = torch.arange(frames).repeat_interleave(queries)
    query_frames = torch.full((queries,), frames - 1)
    before = _reset_peak()
    start = time.perf_counter()
    mass = attention_mass_by_frame(q, k, query_frames, key_frames, frames)
    seconds = time.perf_counter() - start
    peak = _status("VmHWM") - before
    assert torch.allclose(mass.sum(-1), torch.ones(()))
    chunk = max(1, SCORES_BUDGET // (heads * keys))
    return {"keys": keys, "queries": queries, "heads": heads, "head_dim": head_dim, "chunk": chunk,
            "peak_bytes": peak, "full_matrix_bytes": heads * queries * keys * 4, "seconds": seconds}


def mode_memory(mode: str, steps: int, frames: int, pca_tokens: int) -> dict:
    """Run in a fresh process (see main): peak memory of a probed generation above the loaded model."""
    from probes import Probe
    from scd import VideoBenchmark, generate, load_model

    torch.set_num_threads(2)
    model = load_model("baseline")
    clip = VideoBenchmark("val", frames=4 + frames).clip(0)
    generate(model, clip[:4], 1, steps=2)  # allocator and kernels warm
    before = _reset_peak()
    with Probe(model, "all", mode=mode, pca_tokens=pca_tokens) as probe:
        generate(model, clip[:4], frames, steps=steps)
    probe._recorded()  # builds the live recording
    return {"mode": mode, "steps": steps, "frames": frames, "peak_bytes": _status("VmHWM") - before}


def _cpu() -> str:
    """The processor's model name (Linux), else the architecture."""
    cpuinfo = Path("/proc/cpuinfo")
    for line in cpuinfo.read_text().splitlines() if cpuinfo.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def write_results(path: Path, command: str, over: list[dict], attn: dict, modes: list[dict], frames: int,
                  steps: int, pca_tokens: int, memory_frames: int) -> None:
    lines = [START, "## Probe overhead and memory (`benchmarks/bench_probes.py`)", "",
             f"Command: `{command}` on {_cpu()}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__}.", "",
             f"### Time: probed / unprobed generation (shipped baseline, 4 context + {frames} frames, {steps} steps, "
             f"{len(over[1]['rounds'])} rounds)", "",
             "Each probed run is timed between two unprobed runs and divided by their mean (the machine's speed drifts; "
             "this cancels it to first order); the settings' order rotates between rounds; the mean over rounds with "
             "its 95% t-interval, and the median. Two identical unprobed runs in a row differ by 11% (standard "
             "deviation of their ratio) on this shared machine, hence many short rounds. The last column is measured "
             "inside the same probed run: the time spent in the "
             "probe's own callbacks over the rest of that run (its Python and reductions; PyTorch's hook dispatch is "
             "not in it), free of the drift between runs. Every probed video equals the unprobed one bitwise "
             "(checked).", "",
             "| setting | seconds (median) | probed / unprobed: mean [95% interval] | median | in the probe's "
             "callbacks |", "|---|---:|---:|---:|---:|"]
    for r in over:
        share = f"{100 * r['probe_share']:.1f}%" if r["rounds"] else "-"
        if not r["rounds"]:
            lines.append(f"| {r['setting']} | {r['seconds']:.2f} | 1 | 1 | - |")
            continue
        low, high = r["interval"]
        lines.append(f"| {r['setting']} | {r['seconds']:.2f} | {r['ratio']:.3f}x [{low:.3f}, {high:.3f}] | "
                     f"{r['median']:.3f}x | {share} |")
    lines += ["", "Per round: " + "; ".join(f"{r['setting']}: {', '.join(f'{x:.2f}' for x in r['rounds'])}"
                                            for r in over if r["rounds"]) + ".", "",
              "How a probe stays cheap: the attention of every probed layer of a pass is computed once the pass is "
              "over, in one batch, by PyTorch's fused attention with the one-hot key cells as values (exact softmax, "
              "no probability matrix held; `probes.attention.pooled_attention`); the step x step Gram of a frame's "
              "features is one float64 matrix product when the frame is done (`probes.reductions.StepGram`); the "
              "hooks only keep references and float32 copies."]
    lines += ["", "### Memory: per-frame attention mass for a long context", "",
              f"{attn['queries']:,} queries (one frame) against {attn['keys']:,} keys ({attn['keys'] // attn['queries']} "
              f"frames x {attn['queries']:,} tokens, 480p Wan latents), {attn['heads']} heads of dim {attn['head_dim']}, "
              f"default chunk ({attn['chunk']} queries): peak {_mib(attn['peak_bytes'])} above the inputs, "
              f"{attn['seconds']:.1f} s. The full attention matrix in float32 would be {_mib(attn['full_matrix_bytes'])}.",
              "", f"### Memory: full vs stream mode, all 30 layers with attention, {memory_frames} generated frames "
              f"(stream keeps {pca_tokens} of 64 tokens for PCA)", "",
              "Peak resident memory above the loaded model, each setting in a fresh process "
              "(MALLOC_MMAP_THRESHOLD_=16384, so freed tensors leave the resident set).", "",
              "| mode | steps | peak |", "|---|---:|---:|"]
    lines += [f"| {r['mode']} | {r['steps']} | {_mib(r['peak_bytes'])} |" for r in modes]
    lines += ["", "Full mode keeps every token of every frame and step (float32 in memory, float16 on disk). Stream "
              "mode keeps the token subsample and, per layer, the steps of the frame being denoised only (an exact "
              "step x step Gram row needs every earlier step of that frame), dropped when the frame is done: its "
              "memory does not grow with the number of frames, but one frame's steps are "
              "held while it is denoised.", END]
    text = path.read_text() if path.exists() else "# Benchmark results\n\n"
    if START in text:
        text = text[: text.index(START)] + "\n".join(lines) + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + "\n".join(lines) + "\n"
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=24, help="interleaved rounds for the overhead (each probed run "
                        "between two unprobed ones)")
    parser.add_argument("--frames", type=int, default=1, help="frames generated per timed run (overhead; with --scale)")
    parser.add_argument("--memory-frames", type=int, default=4, help="frames generated in the memory measurement")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--pca-tokens", type=int, default=16, help="stream mode's token subsample in the memory test")
    parser.add_argument("--mode-memory", nargs=2, metavar=("MODE", "STEPS"), help=argparse.SUPPRESS)
    parser.add_argument("--scale", default=None, metavar="SIZE", help="only: every layer probed on a random model of "
                        "this size (wan1.3b), against the same generation unprobed; printed, not written")
    parser.add_argument("--device", default="cpu", help="with --scale: cpu or cuda")
    parser.add_argument("--latent-size", default="60x104", help="with --scale: the latent frame HxW")
    parser.add_argument("--context", type=int, default=21, help="with --scale: context frames")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    args = parser.parse_args()
    if args.mode_memory:  # the child process of one memory measurement
        print(json.dumps(mode_memory(args.mode_memory[0], int(args.mode_memory[1]), args.memory_frames,
                                     args.pca_tokens)))
        return
    if args.scale:
        latent = tuple(int(v) for v in args.latent_size.lower().split("x"))
        print(json.dumps(overhead_at_scale(args.scale, args.device, latent, args.context, args.frames, args.steps,
                                           args.repeats)))
        return
    torch.set_num_threads(2)
    over = overhead(args.repeats, args.frames, args.steps)
    for r in over:
        print(f"{r['setting']:40s} {r['seconds']:7.2f} s  {r['ratio']:.3f}x [{r['interval'][0]:.3f}, {r['interval'][1]:.3f}]  "
              f"callbacks {100 * r['probe_share']:.1f}%", flush=True)
    attn = attention_memory()
    print(f"attention mass: peak {_mib(attn['peak_bytes'])} vs full matrix {_mib(attn['full_matrix_bytes'])}", flush=True)
    modes = []
    for steps in (50, 200):
        for mode in ("full", "stream"):
            child = subprocess.run([sys.executable, __file__, "--mode-memory", mode, str(steps), "--memory-frames",
                                    str(args.memory_frames), "--pca-tokens", str(args.pca_tokens)],
                                   capture_output=True, text=True, check=True, env=MALLOC_ENV)
            modes.append(json.loads(child.stdout.strip().splitlines()[-1]))
            print(f"{mode:6s} {steps:3d} steps: peak {_mib(modes[-1]['peak_bytes'])}", flush=True)
    command = "python benchmarks/bench_probes.py " + " ".join(sys.argv[1:])
    write_results(args.out, command.strip(), over, attn, modes, args.frames, args.steps, args.pca_tokens,
                  args.memory_frames)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
