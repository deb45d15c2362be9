"""The parser of the `probe` command and its entry point. Imports nothing heavy: `probe --help` answers at once,
and each command imports torch and the packages when it runs."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from probe_cli.checks import (
    CLIP_MAX,
    DTYPES,
    FULL_MODE_LIMIT_GIB,
    SEED_MAX,
    UsageError,
    device_name,
    finite,
    integer_list,
    latent_size,
    layers_syntax,
    plain_name,
    ranged,
    whole,
)
from probes.choices import BACKENDS, CAPTURES, GUIDANCE_PASSES, MODES
from scd.contract import ROPE_POLICIES
from scd.training.config import FAMILY_DEFAULTS, LIMITS, SCENES, TrainConfig, describe

STEPS, FRAMES, CONTEXT = ranged(1, 1000), ranged(1, 1024), ranged(0, 1024)
CLIPS = ranged(1, 10_000)
OUR_PACKAGES = ("scd", "probes", "analyses", "probe_cli")


BENCH_SIZES = ("wan1.3b", "wan-tiny")  # named sizes of both families that probe bench builds with random weights (scd.zoo)


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line (no usage block): the problem, then where the help is."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def _get_values(self, action, arg_strings):
        # argparse drops a lone "--" given as a flag's value (`--clip=--`) and then takes the default: refuse it.
        if action.option_strings and arg_strings == ["--"]:
            raise argparse.ArgumentError(action, "'--' is not a value; accepted: see the flag in --help")
        return super()._get_values(action, arg_strings)


def _train_flag(name: str):
    """An argparse `type` for a TrainConfig field, with the field's range (scd.training.config.LIMITS)."""
    kind = next(f.type for f in fields(TrainConfig) if f.name == name)

    def parse(text: str):
        from probe_cli.checks import integer, number

        low, high, closed = LIMITS[name]
        if name == "threads":
            low = 1  # 0 (torch's default) is what leaving the flag out gives
        try:
            value = integer(text, int(low), int(high)) if kind == "int" else number(text, low, high)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e).replace("value ", "", 1)) from None
        if not closed and value >= high:
            raise argparse.ArgumentTypeError(f"{value:g} is out of range; accepted: {describe(name)}")
        return value
    parse.__name__ = name
    return parse


def _sampling_flags(parser) -> None:
    """How the frames are sampled, as the model's authors run it: the sampler, its timesteps, the KV cache's window."""
    from probe_cli.checks import decimal, timestep_list

    # Parsed only: SamplingSpec checks every sampling value, once (probe_cli.probing._check_sampling_flags).

    g = parser.add_argument_group("sampling as the model's authors run it (few-step samplers, rolling KV cache)")
    g.add_argument("--timesteps", type=timestep_list, default=None, help="an explicit timestep list, decreasing, in "
                   "0..1000 (Self-Forcing: 1000,750,500,250 with --warp; CausVid: 1000,757,522,0); replaces --steps")
    g.add_argument("--warp", action="store_true", help="map --timesteps through the shift warp (Self-Forcing's "
                   "warp_denoising_step): t -> 1000 s'(t/1000), s'(s) = shift s / (1 + (shift - 1) s)")
    g.add_argument("--shift", type=decimal, default=None,
                   help="flow shift of the scheduler and the warp (default: the model's; Self-Forcing's timestep_shift is 5)")
    g.add_argument("--sampler", default="ode", metavar="{ode,renoise}", help="ode: the scheduler's steps (default); "
                   "renoise: the few-step sampler of Self-Forcing and CausVid (predict the clean frame, noise it afresh "
                   "to the next timestep)")
    g.add_argument("--window", type=whole, default=None, help="rolling KV cache: latent frames a chunk "
                   "attends to, the sinks and itself included (Self-Forcing's local_attn_size; LongLive: 12); default: "
                   "every finished frame")
    g.add_argument("--sink-frames", type=whole, default=0, help="with --window: the first frames, attended "
                   "to for ever (Self-Forcing's sink_size; LongLive: 3)")
    g.add_argument("--rope", default="absolute", metavar="{" + ",".join(ROPE_POLICIES) + "}", help="with --window: "
                   "keys rotated at their frame's index in the video (absolute: Self-Forcing, LongLive) or at their place "
                   "in the cache "
                   "(cache: positions stay below the window, so a rollout can outrun the RoPE table)")


def _run_parser(sub) -> None:
    from probe_cli import probing

    r = sub.add_parser("run", help="probe a model while it generates: features and attention at every step")
    which = r.add_mutually_exclusive_group()
    which.add_argument("--layer", type=layers_syntax, default="15", help="one block index (default 15)")
    which.add_argument("--layers", type=layers_syntax, default=None, help="comma-separated block indices, or 'all'")
    r.add_argument("--model", default=None, help="shipped name, checkpoint directory, .safetensors file, "
                   "or diffusers:DIR (default baseline)")
    r.add_argument("--size", choices=BENCH_SIZES, default=None, help="instead of --model: the baseline family at this "
                   "named size with seeded random weights (wan1.3b: 480p latents, 1,560 tokens per frame; --latent-size "
                   "for a smaller frame), for the speed and memory of probing at scale")
    r.add_argument("--clip", default="0", help=f"val clip index in 0..{CLIP_MAX} (diffusers models: seed of the context "
                   "latents); several (0-3 or 0,2,5) make a sweep, sharded over the ranks of torchrun")
    r.add_argument("--latent-size", type=latent_size, default=None, help="diffusers models and --size only: latent "
                   "frame size HxW (default 8x8; with --size, the size's own)")
    r.add_argument("--text-embeddings", default=None, help="diffusers models only: a .safetensors file of the prompt's "
                   "embeddings [tokens, text_dim] (default: zeros)")
    d = r.add_argument_group("diffusers models (Wan, SkyReels-V2 from a local directory)")
    d.add_argument("--prompt", default=None, help="text prompt, encoded by the pipeline directory's umT5 text encoder")
    d.add_argument("--negative-prompt", default=None, help="the unconditional pass's prompt under --guidance-scale "
                   "(default: the empty prompt; zeros with --text-embeddings)")
    d.add_argument("--guidance-scale", type=finite(0, 100, scientific=False), default=None,
                   help="classifier-free guidance scale in [0, 100] (default 1: none); each pass keeps its own KV cache")
    d.add_argument("--guidance-pass", choices=(*GUIDANCE_PASSES, "both"), default="cond", help="which pass of the "
                   "guidance the probe records (default cond; both: the unconditional one into OUT.uncond)")
    d.add_argument("--frames-per-block", type=ranged(1, 64), default=None, help="latent frames denoised together as one "
                   "causal chunk (default: the model's num_frame_per_block, else 1)")
    d.add_argument("--fps", type=ranged(1, 240), default=None, help="SkyReels-V2 with inject_sample_info: the frame rate "
                   "it is conditioned on, 1..240 (default 24; its pipelines embed 16 fps and any other rate apart)")
    d.add_argument("--scheduler", choices=("auto", "euler", "pipeline"), default="auto", help="auto: the pipeline "
                   "directory's scheduler (e.g. UniPC with its flow shift) where it has one, else flow-matching Euler")
    d.add_argument("--context-video", default=None, help="a video file (mp4, ...) or folder of frames, resized and "
                   "encoded with the directory's VAE as the context (default: seeded Gaussian latents)")
    r.add_argument("--scene", choices=SCENES, default="sprites", help="the benchmark scene of the val clips (the one "
                   "the model was trained on)")
    r.add_argument("--context", type=whole, default=4, help="context frames given to the model (0, diffusers "
                   "models only: text-to-video, the first chunk from the prompt alone, as Self-Forcing and LongLive)")
    r.add_argument("--frames", type=whole, default=4, help="frames to generate, each one probed (default 4)")
    r.add_argument("--clip-frames", type=whole, default=None,
                   help="frames of the val clip, at most 4096 (default context + frames)")
    r.add_argument("--steps", type=whole, default=None, help="denoising steps per frame (1..10000; default 50, or the "
                   "length of --timesteps)")
    _sampling_flags(r)
    r.add_argument("--seed", type=whole, default=0, help=f"base noise seed in 0..{SEED_MAX}: clip c's "
                   "noise is drawn with seed + c (each clip of a sweep its own noise; recorded in the manifest)")
    r.add_argument("--seeds", type=whole, default=1, help="noise draws per clip, 1..1000 (default 1): draw j "
                   "of clip c uses seed + c + j * 2^31; two or more give finding 1's different-noise control")
    r.add_argument("--control", choices=("none", "permuted", "rescaled"), default="none", help="permuted: the model's "
                   "own architecture with every weight tensor's entries permuted (seeded by --control-seed): a "
                   "random-weight control, probed with the same clips and settings, that must never come out "
                   "reproduced; rescaled (the built-in baseline): permuted, then each block's update scaled to the "
                   "trained model's, so that the control transforms its input as much as the trained model does")
    r.add_argument("--control-seed", type=ranged(0, SEED_MAX), default=None, help="seed of the permutation (with "
                   "--control permuted; default 0)")
    r.add_argument("--capture", default=",".join(CAPTURES), help=f"comma-separated: {', '.join(CAPTURES)}")
    r.add_argument("--mode", choices=("auto", *MODES), default="auto", help="keep every token (full, float16 on disk) "
                   "or only running reductions and a token subsample (stream); auto (default): full unless the recorded "
                   f"features would exceed {FULL_MODE_LIMIT_GIB} GiB of host memory, then stream")
    r.add_argument("--bands", type=whole, default=3, help="rows and columns per frame of the pooled attention "
                   "map (the paper's figure shows about 3; the tokens per frame give the unpooled map)")
    r.add_argument("--hook", default="hook_resid_post", help="the block HookPoint recorded as features")
    r.add_argument("--backend", default=None, metavar="{" + ",".join(BACKENDS) + "}",
                   help="how the model is read: TransformerLens HookPoints (default) or nnsight by module path")
    r.add_argument("--device", type=device_name, default="cpu", help="cpu, cuda, cuda:N or mps, if this machine has it")
    r.add_argument("--dtype", choices=DTYPES, default="float32")
    r.add_argument("--out", default=None, help="run directory (default reports/runs/MODEL-layer-15)")
    r.add_argument("--force", action="store_true", help="replace an existing run or sweep directory (only one)")
    r.add_argument("--quiet", action="store_true", help="no progress bar or table, only the run's path")
    r.set_defaults(func=probing.cmd_run)

    w = sub.add_parser("show", help="print the summary table of a run directory")
    w.add_argument("run", help="run directory written by probe run")
    w.set_defaults(func=probing.cmd_show)

    p = sub.add_parser("report", help="one self-contained HTML report (claims, figures) from run directories")
    p.add_argument("runs", nargs="+", help="run directories written by probe run (e.g. baseline and SCD)")
    p.add_argument("-o", "--output", default="reports/report.html", help="HTML file to write")
    p.add_argument("--bench", default=None, help="a directory written by probe bench, to include its tables")
    p.add_argument("--interventions", action="append", default=None,
                   help="a directory written by probe intervene, to include it (repeat for several)")
    p.add_argument("--emergence", default=None, help="a directory written by probe emergence, to include the study")
    p.add_argument("--force", action="store_true", help="replace an existing report written by this toolkit")
    p.add_argument("--quiet", action="store_true", help="no progress bar over the report's parts, only its path")
    p.set_defaults(func=probing.cmd_report)


def _measure_parsers(sub) -> None:
    from probe_cli import measuring

    i = sub.add_parser("intervene", help="causal tests: the paper's middle-span skip and frame-diagonal mask; step-0 "
                       "feature reuse and attention knockout")
    i.add_argument("--model", default="baseline", help="a causal baseline: shipped name or checkpoint path; with --plan "
                   "also diffusers:DIR (set up as the plan was calibrated; held-out Gaussian latent contexts, drift on "
                   "the latents)")
    i.add_argument("--reuse", default="default",
                   help="layers K: blocks 0..K run only at refresh steps, K's output reused (default 0,5,10,15,20,25,29; 'none')")
    i.add_argument("--knockout", default="default",
                   help="layers K: blocks K.. attend only within the frame (default 0,5,10,15,20,25,29; 'none')")
    i.add_argument("--skip", default="default", help="middle-span skip: blocks A-B run at the first k steps only "
                   "(default: the paper's 8-22, mapped; 'none')")
    i.add_argument("--keep-steps", type=integer_list(1, 1000), default=[1, 3, 5, 10],
                   help="skip: the k swept, comma-separated (default 1,3,5,10)")
    i.add_argument("--recompute-last", type=integer_list(1, 1000), default=None,
                   help="skip: also run the span at the last m steps, for each m given (comma-separated), with k = 5 "
                   "(the skip's claim); default: none")
    i.add_argument("--knockout-layer", default="none", help="layers L: block L alone attends only within the frame, "
                   "one layer at a time (comma-separated, 'all' or 'none', the default)")
    i.add_argument("--diagonal", default="default", help="frame-diagonal mask from layer K on, no fine-tune "
                   "(default: the last 5 blocks; 'none')")
    i.add_argument("--tuned", default=None, help="a checkpoint fine-tuned with the frame-diagonal mask, measured "
                   "beside the unmodified model (e.g. baseline-diagonal)")
    i.add_argument("--tuned-control", default=None, help="the compute-matched control of --tuned: the same model "
                   "fine-tuned the same steps, learning rate and data without the mask (a checkpoint directory)")
    i.add_argument("--refresh", type=STEPS, default=None,
                   help="reuse only: recompute blocks 0..K every m steps, 1..1000 (default: step 0 only)")
    i.add_argument("--plan", default=None, help="a caching plan (probe plan): validate it on held-out clips against "
                   "MagCache- and TeaCache-style skipping of the whole model and the middle-span skip, each at the "
                   "plan's share of skipped block calls (the other interventions are not run)")
    i.add_argument("--budget", default=None, help="with --plan: the drift budgets to validate, comma-separated "
                   "(default the plan's): one point of the speed-quality curve each")
    i.add_argument("--first-clip", type=ranged(0, 2**31 - 10_001), default=0, help="the first val clip (with --plan: "
                   "clips held out from the plan's calibration)")
    i.add_argument("--clips", type=CLIPS, default=16, help="val clips (1..10000)")
    i.add_argument("--draws", type=ranged(1, 8), default=1, help="noise draws per clip, each with its own unmodified "
                   "reference and redraw (1..8; intervals stay over clips, a clip's draws averaged)")
    i.add_argument("--context", type=FRAMES, default=4, help="context frames")
    i.add_argument("--frames", type=FRAMES, default=4, help="generated frames per clip")
    i.add_argument("--steps", type=STEPS, default=50, help="denoising steps per frame")
    i.add_argument("--seed", type=ranged(0, SEED_MAX - 2**32), default=0, help="base noise seed: clip c draws with "
                   "seed + c, its second draw (the noise floor) with seed + c + 2^31")
    i.add_argument("--device", type=device_name, default="cpu")
    i.add_argument("--out", default="reports/interventions", help="directory for interventions.parquet/.md/.json, frames.npz")
    i.add_argument("--force", action="store_true", help="replace an existing interventions directory")
    i.add_argument("--quiet", action="store_true")
    i.set_defaults(func=measuring.cmd_intervene)

    b = sub.add_parser("bench", help="SCD vs baseline in one process: latency, frames/s, memory, FLOPs, PSNR/SSIM")
    b.add_argument("--baseline", default=None, help="the causal baseline (shipped name or checkpoint path; default "
                   "baseline)")
    b.add_argument("--scd", default=None, help="the model compared with it (shipped name or checkpoint path; default scd)")
    b.add_argument("--size", choices=BENCH_SIZES, default=None, help="instead of checkpoints: both families at this "
                   "named size with seeded random weights (wan1.3b: width 1536, 30 blocks / SCD 25 + 10, 16-channel "
                   "60x104 latents in 2x2 patches); speed and memory only")
    b.add_argument("--latent-size", type=latent_size, default=None, help="with --size: a smaller latent frame HxW "
                   "(each side a multiple of 2), e.g. 8x8 on a CPU")
    b.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="default: bfloat16 on CUDA, float32 "
                   "on the CPU")
    b.add_argument("--compile", choices=("default", "reduce-overhead", "max-autotune"), default=None,
                   help="torch.compile every block in this mode (reduce-overhead: CUDA graphs); default: eager")
    b.add_argument("--steps", type=integer_list(1, 1000), default=None, help="denoising steps per frame (comma-separated; "
                   "default 50,4, with --size 4,50)")
    b.add_argument("--context", type=integer_list(1, 1024), default=None, help="context frames (comma-separated; "
                   "default 4,16, with --size 1,21)")
    b.add_argument("--frames", type=ranged(2, 1024), default=8, help="frames generated per timed run (2..1024)")
    b.add_argument("--repeats", type=ranged(1, 100), default=3, help="timed runs per model and setting, interleaved")
    b.add_argument("--clips", type=CLIPS, default=32, help="val clips for PSNR / SSIM")
    b.add_argument("--samples", type=ranged(1, 64), default=4, help="samples per clip for best-of-k quality")
    b.add_argument("--quality-steps", type=STEPS, default=50, help="denoising steps for the quality table")
    b.add_argument("--device", type=device_name, default="cpu")
    b.add_argument("--out", default="reports/bench", help="directory for bench.md, speed/quality.parquet, bench.json")
    b.add_argument("--force", action="store_true", help="replace an existing bench directory")
    b.add_argument("--quiet", action="store_true")
    b.set_defaults(func=measuring.cmd_bench)


def _emergence_parser(sub) -> None:
    from probe_cli import emerging

    e = sub.add_parser("emergence", help="the emergence study: measure runs of probe study train into cards, and "
                       "rebuild its tables, figures and answer from the cards")
    e.add_argument("runs", nargs="*", help="finished runs of probe study train to measure into cards; none: rebuild "
                   "from the cards in --out")
    e.add_argument("--snapshot-steps", default="all", help="the snapshots probed (over training): all, none, or "
                   "comma-separated causal steps (a snapshot's step after any bidirectional pretraining; 0: its end)")
    e.add_argument("--clip", default="0-15", help=f"val clips probed (indices in 0..{CLIP_MAX}; default 0-15)")
    e.add_argument("--probes", default="runs/emergence-probes", help="where the probed sweeps are written (large; "
                   "not in git)")
    e.add_argument("--out", default="reports/emergence", help="the study's directory: cards, tables, figures")
    e.add_argument("--force", action="store_true", help="replace the study's files (an emergence directory only)")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=emerging.cmd_emergence)


def _study_parser(sub) -> None:
    from probe_cli import emerging

    s = sub.add_parser("study", help="the emergence study's training plan (scd.training.study): train its runs, or list them")
    s.add_argument("action", choices=("train", "status"), help="train: every run of the plan not yet done, sitting "
                   "by sitting (start one worker per core); status: each run's trained steps")
    s.add_argument("--root", default="runs/study", help="where the runs are trained (large; not in git)")
    s.add_argument("--conditions", default=None, help="comma-separated conditions of scd.training.study.CONDITIONS "
                   "(default: all)")
    s.add_argument("--seeds", type=integer_list(0, 2**32 - 1), default=None, help="training seeds (default 0,1,2)")
    s.add_argument("--skip-measured", default=None, metavar="DIR", help="a study directory (reports/emergence): the "
                   "runs with a card there are measured already and not trained again (a fresh machine's checkout)")
    s.add_argument("--threads", type=ranged(1, 1024), default=None, help="torch threads of the runs this worker starts "
                   "(default: the plan's, 1); a run detail like the machine, recorded in its card; a resumed run keeps "
                   "its own")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=emerging.cmd_study)


def _plan_parser(sub) -> None:
    from probe_cli import measuring

    p = sub.add_parser("plan", help="a calibrated caching plan from probe runs (MagCache ratios, TeaCache's fit, "
                       "which blocks to reuse at which steps, the encoder / decoder split)")
    p.add_argument("runs", nargs="+", help="run or sweep directories of probe run --layers all --mode full (the "
                   "calibration set)")
    p.add_argument("--budget", type=finite(0, 1e6), default=0.1, help="drift a block may accumulate since it was "
                   "last computed before it is computed again (0: compute everything; default 0.1)")
    p.add_argument("--out", default="plan.json", help="the plan file to write (JSON; default plan.json)")
    p.add_argument("--export", choices=("diffusers",), help="also write OUT's stem + .diffusers.json: MagCacheConfig and "
                   "TaylorSeerCacheConfig arguments matched to the plan's share of skipped blocks, with the decisions "
                   "each makes (analyses.plan.cache_config builds the object transformer.enable_cache takes)")
    p.add_argument("--heads", default=None, metavar="BUDGETS", help="write a head plan instead (analyses.head_plan): "
                   "per attention head, the sinks and recent frames its KV cache keeps, from runs with attention "
                   "recorded; BUDGETS: the attention mass a head may lose, comma-separated (e.g. 0.01,0.05,0.1)")
    p.add_argument("--force", action="store_true", help="replace a plan this command wrote")
    p.set_defaults(func=measuring.cmd_plan)


def _make_parsers(sub) -> None:
    from probe_cli import making

    g = sub.add_parser("generate", help="generate frames after context frames and write a PNG strip")
    g.add_argument("--model", default="baseline", help="shipped name, checkpoint directory or .safetensors file")
    g.add_argument("--clip", type=ranged(0, CLIP_MAX), default=0, help="val clip index")
    g.add_argument("--scene", choices=SCENES, default="sprites", help="the benchmark scene of the val clip")
    g.add_argument("--context", type=FRAMES, default=4, help="context frames given to the model")
    g.add_argument("--frames", type=FRAMES, default=4, help="frames to generate")
    g.add_argument("--steps", type=STEPS, default=50, help="denoising steps per frame")
    g.add_argument("--seed", type=ranged(0, SEED_MAX), default=0)
    g.add_argument("--device", type=device_name, default="cpu")
    g.add_argument("--dtype", choices=DTYPES, default="float32")
    g.add_argument("-o", "--output", default="generated.png", help="PNG file to write")
    g.add_argument("--force", action="store_true", help="replace an existing strip written by this toolkit")
    g.add_argument("--quiet", action="store_true")
    g.set_defaults(func=making.cmd_generate)

    t = sub.add_parser("train", help="train a model on the procedural benchmark (resumable)")
    t.add_argument("family", choices=sorted(FAMILY_DEFAULTS), help="model family")
    t.add_argument("--out", required=True, help="training directory for checkpoints and the loss log")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--force", action="store_true", help="start over in --out, replacing a training directory")
    t.add_argument("--until", type=ranged(1, 10**8), default=None, help="end this sitting after this step (resume later)")
    t.add_argument("--quiet", action="store_true")
    for f in fields(TrainConfig):
        if f.name == "family":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f"default {f.default} (or the family's, scd.training.config.FAMILY_DEFAULTS)"
        if f.type == "bool":
            t.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=default)
        elif f.name == "init":
            t.add_argument(flag, default=None, help="fine-tune: start from these weights (a shipped name or a "
                           "checkpoint of the same size); default: a fresh init")
        elif f.name == "scene":
            t.add_argument(flag, choices=SCENES, default=None, help="default sprites; the benchmark scene to train on")
        elif f.type == "str":
            t.add_argument(flag, type=plain_name, default=None, help=f"{default}; a named size of the family")
        else:
            t.add_argument(flag, type=_train_flag(f.name), default=None, help=f"{default}; {describe(f.name)}")
    t.set_defaults(func=making.cmd_train)

    c = sub.add_parser("convert", help="a Wan / CausVid / Self-Forcing / LongLive / Rolling or Causal Forcing / SkyReels-V2 "
                       "checkpoint (original or diffusers layout, 1.3B or 14B) -> a "
                       "diffusers transformer directory (safetensors)")
    c.add_argument("source", help="a .safetensors file, a sharded checkpoint (its .index.json, or a directory of "
                   ".safetensors shards), or .pt / .pth (read with torch.load(weights_only=True) only)")
    c.add_argument("out", help="the diffusers transformer directory to write (config.json + safetensors)")
    c.add_argument("--heads", type=ranged(1, 512), default=None, help="attention heads (default: width / 128, Wan's)")
    c.add_argument("--frames-per-block", type=ranged(1, 64), default=None, help="SkyReels-V2 checkpoints: the causal "
                   "chunk size written into the config (num_frame_per_block); a Wan checkpoint's is chosen by probe run")
    ema = c.add_mutually_exclusive_group()
    ema.add_argument("--ema", dest="ema", action="store_true", default=None, help="a checkpoint with both "
                     "generator_ema and generator: convert the EMA weights (Self-Forcing's --use_ema)")
    ema.add_argument("--no-ema", dest="ema", action="store_false", help="... or the raw generator weights")
    c.add_argument("--lora", default=None, help="a LoRA adapter to merge into the weights (LongLive's lora.pt: "
                   "PEFT's lora_A / lora_B under generator_lora), at alpha / rank")
    c.add_argument("--lora-alpha", type=finite(1e-6, 1e6), default=None, help="the LoRA's alpha where the file does "
                   "not say it (LongLive's config: adapter.alpha)")
    c.add_argument("--quiet", action="store_true", help="do not print what was read and chosen")
    c.add_argument("--force", action="store_true", help="replace a directory this command wrote")
    c.set_defaults(func=making.cmd_convert)

    e = sub.add_parser("export", help="ship a trained run as scd/checkpoints/NAME (float16) with a model card")
    e.add_argument("run", help="training run directory")
    e.add_argument("--name", type=plain_name, required=True, help="checkpoint name, e.g. baseline (a plain name)")
    e.add_argument("--clips", type=CLIPS, default=32, help="val clips for the model card's quality table")
    e.add_argument("--steps", type=STEPS, default=50, help="denoising steps for the validation")
    e.add_argument("--weights", choices=["auto", "ema", "raw"], default="auto",
                   help="EMA or raw weights; auto: the lower loss on unseen train clips (never val)")
    e.add_argument("--force", action="store_true", help="replace an existing shipped checkpoint")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=making.cmd_export)


def build_parser() -> argparse.ArgumentParser:
    """The `probe` parser: every flag with its accepted values (nothing heavy is imported to build it)."""
    parser = Parser(prog="probe", description="Probe causal video diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _run_parser(sub)
    _measure_parsers(sub)
    _plan_parser(sub)
    _make_parsers(sub)
    _emergence_parser(sub)
    _study_parser(sub)
    return parser


def _ours(error: BaseException) -> bool:
    """A refusal of the toolkit's own (a ValueError subclass defined in its packages), not a bug elsewhere."""
    return isinstance(error, ValueError) and type(error).__module__.split(".")[0] in OUR_PACKAGES


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `probe` console script: 0 on success, 2 (one line on stderr) on bad input, 3 (one line)
    on a fault of the machine (ENOSPC, EIO, memory), with the outputs left as they were."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a flag argparse refused (2, its one line already printed)
        return e.code if isinstance(e.code, int) else 2
    try:
        args.func(args)
    except KeyboardInterrupt:
        print(f"probe {args.command}: interrupted; nothing was written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`probe study status | head`): not a fault, nothing more to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not raise again
        return 0
    except (OSError, MemoryError) as e:  # a fault of the machine, not of the input: the outputs are as they were
        print(f"probe {args.command}: fault: {_fault(e)}; nothing was written or changed at the outputs",
              file=sys.stderr)
        return FAULT
    except Exception as e:
        fault = _os_error_inside(e)
        if fault is not None:  # a writer that wraps the system's error (safetensors' Rust serializer)
            print(f"probe {args.command}: fault: {_fault(fault)}; nothing was written or changed at the outputs",
                  file=sys.stderr)
            return FAULT
        if not _ours(e):
            raise
        message = " ".join(str(e).split())  # one line, whatever the message held
        print(f"probe {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


FAULT = 3  # exit code of a fault of the machine (a full disk, an I/O error, memory exhausted); 2 is bad input


def _os_error_inside(error: BaseException) -> OSError | None:
    """The OSError a library reported inside its own exception type (safetensors: "I/O error: ... (os error 28)")."""
    import errno
    import os
    import re

    found = re.search(r"os error (\d+)\)", str(error)) if type(error).__name__ == "SafetensorError" else None
    if found is None or int(found[1]) not in errno.errorcode:
        return None
    return OSError(int(found[1]), os.strerror(int(found[1])))


def _fault(error: BaseException) -> str:
    """One line for an OSError or MemoryError: what failed and where."""
    if isinstance(error, MemoryError):
        return "out of memory (MemoryError); try fewer frames, layers or a smaller --latent-size"
    where = f" ({error.filename})" if getattr(error, "filename", None) else ""
    what = error.strerror or str(error) or type(error).__name__
    return " ".join(f"{what}{where}".split())
