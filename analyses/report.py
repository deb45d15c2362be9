"""`probe report`: one self-contained HTML file from one or more run directories.

The claims table first, then the figures; with several runs (e.g. baseline and SCD), curves are
overlaid and per-run sections stand side by side. Figures are embedded as base64 PNG, the CSS is
inline, there is no script and nothing is fetched from the network; every string taken from a run
is escaped by Jinja2's autoescape.
"""

from __future__ import annotations

import base64
import datetime
import io
import math
import re
from collections import Counter
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import jinja2
import matplotlib.pyplot as plt
from markupsafe import Markup, escape
from matplotlib.figure import Figure
from matplotlib.text import Text

from analyses import figures, paper_figures
from analyses.bench import QUALITY_COLUMNS, RATIO_COLUMNS, SPEED_COLUMNS, load_bench
from analyses.claims import (
    INTERVENTION_CLAIMS,
    cross_step,
    evaluate,
    heads_of,
    input_step,
    items_of,
    measures_of,
    paper_layers,
    quality_losses,
    scale_text,
    shown,
)
from analyses.errors import takes_run
from analyses.intervals import over_clips, table_over_clips
from analyses.interventions import SUMMARY_COLUMNS, load_interventions
from analyses.rolling import is_rolling, sampling_of
from analyses.similarity import depth_curve, input_similarity
from analyses.sparsity import sparsity_table
from analyses.thresholds import THRESHOLDS
from probes.recording import Recording, load_run
from probes.store import RunError
from scd.contract import paper_layer
from scd.files import OutputError, atomic_file, check_output, input_path

TEMPLATES = Path(__file__).parent / "templates"
MIN_FONT_PT = 9.0  # the smallest text in a report figure: 12.5 px at 100 dpi, legible at 100% zoom
FIGURE_DPI = 100   # figures are shown at their natural size (at most the page's width), not scaled down
SUMMARY_CHARS = 180  # the summary's numbers: the claim's measured text, cut at a clause boundary


def png_data_uri(fig: Figure, dpi: int = FIGURE_DPI) -> str:
    """A figure as a `data:image/png;base64,...` URI (the figure is closed); every text at least MIN_FONT_PT."""
    for text in fig.findobj(Text):
        if text.get_text() and text.get_fontsize() < MIN_FONT_PT:
            text.set_fontsize(MIN_FONT_PT)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def gif_data_uri(frames, fps: float = 8.0, min_side: int = 128) -> str:
    """uint8 frames [T, H, W, 3] as a looping animated GIF `data:` URI (plays offline, no script), small frames
    enlarged by an integer factor with nearest-neighbour sampling."""
    from PIL import Image

    factor = max(1, -(-min_side // min(frames.shape[1:3])))
    images = [Image.fromarray(frame).resize((frame.shape[1] * factor, frame.shape[0] * factor), Image.NEAREST)
              for frame in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return "data:image/gif;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@takes_run
def run_name(run: Recording) -> str:
    """How a run is named in the report: its model (a control says so), then its directory name."""
    return f"{run.manifest.get('model', '?')} ({run.path.name})"


def _similarity_by_layer(run: Recording) -> list[dict]:
    """Per stepwise layer, over the clips (draws averaged): raw, centred and CKA cross-step similarity, each minus the
    blocks' input's (the noise floor), from the reductions every run stores."""
    items = items_of(run)
    has_input = all(input_similarity(item, "cka") is not None for item in items)
    rows = []
    for layer in run.stepwise_layers:
        row = {"layer": layer}
        for kind in ("token", "centred", "cka"):
            row[kind] = shown(over_clips(items, lambda item, layer=layer, kind=kind: cross_step(item, layer, kind)))
            if has_input:
                row[f"{kind} - input"] = shown(over_clips(
                    items, lambda item, layer=layer, kind=kind: cross_step(item, layer, kind) - input_step(item, kind)))
        rows.append(row)
    return rows


def _heads_by_layer(run: Recording) -> dict[int, dict]:
    """Per layer, the spread over heads (min - max of the head means over clips and draws) of the per-key ratio and the
    lit share."""
    columns = ["per_key_ratio", "lit_share"]
    tables = [heads_of(item) for item in items_of(run)]
    table = tables[0][["layer", "head"]].assign(**(sum(t[columns] for t in tables) / len(tables)))
    return {layer: {"ratio": f"{g.per_key_ratio.min():.3f}-{g.per_key_ratio.max():.3f}",
                    "lit": f"{g.lit_share.min():.3f}-{g.lit_share.max():.3f}"} for layer, g in table.groupby("layer")}


def _layers_text(run: Recording) -> str:
    """The probed layers, with SCD's encoder and decoder layers named as such."""
    layers = run.manifest.get("layers", [])
    parts = {}
    for layer in layers:
        parts.setdefault(run.role(layer), []).append(str(layer))
    if set(parts) <= {"causal"}:
        return ", ".join(map(str, layers))
    return "; ".join(f"{role} {', '.join(values)}" for role, values in parts.items())


def _sweep_text(sweep: dict) -> str:
    """What a merged sweep averages over (the clip and seed above are its first item's, shown in the figures)."""
    items = sweep["items"]
    return (f"mean of {len(items)} runs (clips {sorted({i['clip'] for i in items})}, seeds {sorted({i['seed'] for i in items})}, "
            f"{sweep['world_size']} shards); the PCA and frames show the first")


def _section(run: Recording, scales: dict | None = None) -> dict:
    """One run's part of the report; `scales`: colour ranges shared by every run of the report (`_shared_scales`)."""
    scales = scales or {}
    m = run.manifest
    middle = paper_layers(run.depth)["middle"][0]
    stepwise = run.stepwise_layers
    pca_layer = middle if middle in run.feature_layers else (stepwise or run.feature_layers or [None])[len(stepwise) // 2]
    figs = {}
    if middle in stepwise and len(m.get("frames", [])) > 1:
        figs[f"Finding 1 at layer {middle}, as the paper draws it: one frame across steps (m1 vs m1, m2 vs m2) against "
             "the control, two frames at the same layer (m1 vs m2); right: each step against the last"] = png_data_uri(
            paper_figures.finding1_panels_figure(run))
    if run.attention_layers:
        figs["Finding 2, as the paper draws it: per-key attention of each generated frame on every key (log scale, "
             "pooled cells, heads and steps averaged)"] = png_data_uri(
            paper_figures.attention_maps(run, value_range=scales.get("attention")))
        figs["Per-key attention, earlier / own frame, by layer and denoising step"] = png_data_uri(
            paper_figures.step_heatmap(run, span=scales.get("ratio_span")))
    if stepwise:
        figs["Cross-step cosine similarity (frame being denoised, every step pair)"] = png_data_uri(
            figures.similarity_heatmaps(run, vmin=scales.get("similarity_vmin")))
    if pca_layer is not None:
        figs[f"PCA of layer {pca_layer} over the denoising steps"] = png_data_uri(figures.pca_strip(run, pca_layer))
    if run.attention_layers and is_rolling(run):
        sampling = sampling_of(run)
        window = f"a {sampling['window']}-frame window with {sampling['sink_frames']} sink frame(s), RoPE {sampling['rope']}"
        figs[f"Attention by temporal distance over the rolling KV cache ({window}): layer x distance"] = png_data_uri(
            figures.distance_heatmap(run))
        figs[f"Attention on the sink frames, the own and previous chunk and the rest of the window ({window}), by layer"] \
            = png_data_uri(figures.region_panel(run))
    elif run.attention_layers:
        figs["Attention mass by key-frame offset"] = png_data_uri(figures.offset_heatmap(run))
    if run.text_share_layers:
        figs["The text's share of each block's attention update (cross-attention against self-attention), by layer"] = \
            png_data_uri(figures.text_share_figure(run))
    figs[figures.frames_title(run)] = png_data_uri(figures.frames_figure(run))
    figs["The generated video, playing (context, then generated frames)"] = gif_data_uri(run.video()[0])
    checkpoint = m.get("checkpoint") or {}
    summary = {
        "model": m.get("model"), "checkpoint sha256": checkpoint.get("sha256"), "run directory": str(run.path),
        "clip": f"{m.get('split', '?')} {m.get('clip', '?')}", "seed": m.get("seed"),
        **_generation_text({**(m.get("sampling") or {}), **m["generation"]} if isinstance(m.get("generation"), dict)
                           else None),  # probes.record's generation leaves the sampling to the manifest's own entry
        **({"sweep": _sweep_text(m["sweep"])} if "sweep" in m else {}),
        "frames": f"{m.get('context')} context, probed {m.get('frames')}", "steps": len(m.get("steps", [])),
        "layers": _layers_text(run), "hook": m.get("hook"), "mode": m.get("mode"), "backend": m.get("backend"),
        "versions": ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items()),
        "git revision": m.get("git_revision"),
    }
    similarity = depth_curve(run).round(4).to_dict("records") if stepwise else []
    by_layer = _similarity_by_layer(run) if stepwise else []
    sparsity = sparsity_table(run).round(4).to_dict("records") if run.attention_layers else []
    for row in sparsity:
        row["role"] = run.role(row["layer"])
    measures = []
    if run.attention_layers:
        heads = _heads_by_layer(run)
        columns = ["per_key_ratio", "excess_share", "earlier_key_nats", "lit_share", "earlier_share"]
        by_range = {steps: table_over_clips(items_of(run), lambda item, steps=steps: measures_of(item, steps),
                                            "layer", columns).set_index("layer") for steps in ("all", "first10", "last10")}
        for layer, row in by_range["all"].iterrows():
            cell = lambda r, c: _with_interval(r, c)  # noqa: E731
            measures.append({"layer": layer, "role": run.role(layer), "ratio": cell(row, "per_key_ratio"),
                             "ratio_first": cell(by_range["first10"].loc[layer], "per_key_ratio"),
                             "ratio_last": cell(by_range["last10"].loc[layer], "per_key_ratio"),
                             "excess": cell(row, "excess_share"), "nats": cell(row, "earlier_key_nats"),
                             "lit": cell(row, "lit_share"), "share": cell(row, "earlier_share"),
                             "heads_ratio": heads[layer]["ratio"], "heads_lit": heads[layer]["lit"]})
    control = m.get("control") or {}
    if control:
        summary["control"] = (f"{control.get('kind')} weights (seed {control.get('seed')}): {control.get('what')}; a "
                              "random-weight model of the same architecture, which must never come out reproduced")
    summary["scale"] = scale_text(run)
    summary = {key: "not recorded" if value is None else value for key, value in summary.items()}
    return {"name": run_name(run), "summary": summary, "claims": evaluate(run), "figures": figs,
            "similarity": similarity, "by_layer": by_layer, "sparsity": sparsity, "measures": measures,
            "scale": scale_text(run), "control": bool(control)}


def _generation_text(generation: dict | None) -> dict[str, str]:
    """The manifest's `generation` (how the video was made) as the report's rows; nothing for runs recorded before."""
    if not isinstance(generation, dict):
        return {}
    context = generation.get("context") or {}
    source = context.get("source")
    if source == "video":
        where = f"video {context.get('path')} (sha256 {str(context.get('sha256'))[:12]}), {context.get('latent_frames')} " \
                "latent frames"
    elif source in ("latent noise", "gaussian latents"):  # the second: runs recorded before the name was changed
        where = f"latent noise: seeded Gaussian latents (seed {context.get('seed')}), {context.get('latent_frames')} " \
                "latent frames"
    elif source == "none":
        where = "none: the first chunk generated from the prompt alone (text-to-video)"
    elif source == "tensor":
        where = f"a tensor given to probes.record, {context.get('frames')} frames"
    else:
        where = f"{context.get('split')} clip {context.get('clip')} ({context.get('scene')} scene), {context.get('frames')} " \
                "frames"
    scheduler = generation.get("scheduler") or {}
    if generation.get("timesteps"):  # an explicit list: no scheduler was stepped, whatever an older run wrote here
        stepped = f"none: the explicit timestep list, {generation.get('sampler') or 'ode'} sampler"
    elif scheduler.get("class"):
        stepped = f"{scheduler.get('class')}, shift {scheduler.get('shift')} ({scheduler.get('source')})"
    else:
        stepped = "not recorded"
    rows = {"context": where,
            "prompt": generation.get("prompt") if generation.get("prompt") is not None else
            (f"text embeddings {generation['text_embeddings']}" if generation.get("text_embeddings") else "none"),
            "guidance scale": f"{generation.get('guidance_scale')}" + (
                f" (negative prompt {generation['negative_prompt']!r})" if generation.get("negative_prompt") is not None
                else ""),
            "scheduler": stepped,
            "chunk size": f"{generation.get('frames_per_block')} frame(s) denoised together",
            "sampler": f"{generation.get('sampler') or 'ode'}" + (
                f", timesteps {generation['timesteps']}" + (f" warped at shift {generation.get('shift')}"
                                                             if generation.get("warp") else "")
                if generation.get("timesteps") else ""),
            "KV cache": "every finished frame" if generation.get("window") is None else
            f"rolling window of {generation['window']} frames, {generation.get('sink_frames')} sink frame(s), "
            f"RoPE {generation.get('rope')}",
            "fps": generation.get("fps") if generation.get("fps") is not None else "none (no fps conditioning)",
            "dtype, device": f"{generation.get('dtype')}, {generation.get('device')}"}
    return {k: "not recorded" if v is None else str(v) for k, v in rows.items()}


def _with_interval(row, column: str) -> str:
    """"mean [low, high]" (the mean alone for one clip)."""
    mean, low, high = row[column], row[f"{column}_low"], row[f"{column}_high"]
    return f"{mean:.3f}" if low != low else f"{mean:.3f} [{low:.3f}, {high:.3f}]"  # NaN bounds: one clip


SETTING_COLUMNS = ("layer", "span_end", "keep_steps", "tail_steps")  # -1 there: the setting does not apply


def table_cell(column: str, value) -> str:
    """A table value as the report shows it: 3 significant digits; an empty cell where a setting does not apply (-1
    in the tidy table) or nothing was measured (NaN); "identical" for an infinite PSNR (a video against itself)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "" if value is None else str(value)
    if value != value:
        return ""
    if column in SETTING_COLUMNS and value == -1:
        return ""
    if value in (float("inf"), float("-inf")):
        return "identical" if "psnr" in column else ("inf" if value > 0 else "-inf")
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _records(table, columns: dict[str, str]) -> dict:
    """A summary table as the template shows it: the columns' names and the cells as text (`table_cell`)."""
    return {"columns": list(columns.values()),
            "rows": [[table_cell(c, row[c]) for c in columns] for row in table.to_dict("records")]}


def _bench_section(bench: dict) -> dict:
    """The `probe bench` tables (records, escaped by the template) and its figure."""
    speed = _records(bench["speed"], SPEED_COLUMNS)
    ratios = _records(bench["ratios"], RATIO_COLUMNS)
    quality = _records(bench["quality"], QUALITY_COLUMNS)
    figure = png_data_uri(figures.bench_figure(bench["speed"], bench["ratios"], bench["quality"]))
    return {"info": bench["info"], "speed": speed, "ratios": ratios, "quality": quality, "figure": figure}


def _interventions_section(interventions: dict) -> dict:
    """The `probe intervene` claims, table (records, escaped by the template) and figures."""
    info, summary = interventions["info"], interventions["summary"]
    depth = int(info.get("depth", 30))
    claims = [claim(interventions["table"], depth) for claim in INTERVENTION_CLAIMS]
    measured = [c for c in claims if c.verdict != "not measured"]
    claims = measured if info.get("plan") or info.get("head_plan") else measured or claims  # a plan: no claim
    table = _records(summary, SUMMARY_COLUMNS)
    first, last = paper_layers(depth)["span"]
    wanted = [f"{kind}{layer}" for kind in ("reuse", "knockout") for layer in paper_layers(depth)["middle"] +
              [paper_layer(25, depth)]] + [f"skip{first}-{last}k{k}" for k in (1, 5)] + \
        [f"diagonal{max(0, depth - 5)}", f"diagonal-tuned{max(0, depth - 5)}"]
    shown = [name for name in wanted if name in interventions["videos"]]
    figs = {}
    if summary.intervention.isin(["skip", "diagonal", "diagonal-tuned"]).any():
        figs["The paper's surgeries: quality against the truth and measured speed-up of the middle-span skip against "
             "what varies among the skips measured (k, the steps the span runs, or m, the last steps it is recomputed "
             "at), the unmodified and frame-diagonal models as lines"] = png_data_uri(figures.surgery_figure(summary))
    if summary.intervention.isin(["reuse", "knockout"]).any():
        figs["Drift from the unmodified generation, and the measured speed-up, against the layer step-0 reuse or "
             "knockout starts at"] = png_data_uri(figures.intervention_figure(summary))
    plan_table = rollout = None
    if info.get("plan"):
        plan_table = _plan_table(interventions["table"], info["plan"].get("settings") or {})
        tidy = interventions["table"]
        if "ssim_frames" in tidy and tidy.ssim.notna().any():  # per-frame numbers (since issue 47) and a truth
            rollout = _rollout(interventions["table"])
            figs["Drift along the rollout: per generated frame, drift from the unmodified video and SSIM loss against "
                 "the truth, each rule at the middle matched share"] = png_data_uri(
                figures.position_figure(interventions["table"]))
        figs["A caching plan on held-out clips: speed-up against drift from the unmodified video, the plan at each "
             "budget beside MagCache-, TeaCache-style and middle-span skipping at its share of skipped blocks, the "
             "Pareto front dashed"] = png_data_uri(figures.speed_quality_figure(interventions["table"]))
    heads = _head_validation(interventions["table"]) if info.get("head_plan") else None
    if "ground_truth" in interventions["videos"]:  # a latent model's validation keeps no frames to show
        figs |= {
                f"Clip 0's generated frames under {', '.join(shown) or 'no intervention'}": png_data_uri(
                    figures.intervention_frames(interventions["videos"], info["context"], shown))}
    refresh = info.get("refresh")
    words = {"reuse": "step-0 reuse: blocks 0..K run " + (f"every {refresh} steps" if refresh else "at step 0 only") +
             ", block K's output reused in between",
             "knockout": "knockout: blocks K.. attend only to the frame's own keys (no adaptation)",
             "knockout-layer": "knockout of one layer: layer K alone attends only to the frame's own keys",
             "skip": "skip (the paper's): blocks K..'span to' run at steps < k (and the last m), their residual update "
                     "added after",
             "diagonal": "diagonal: blocks K.. attend within the frame (diagonal-tuned: fine-tuned so)",
             "finetuned": "finetuned: the compute-matched fine-tune without the mask (the control of diagonal-tuned)",
             "plan": "plan: the caching plan's per-block skips at each budget",
             "magcache": "magcache / teacache: whole-model skipping at the same shares of skipped blocks",
             "heads": "heads: the head plan at each budget, each attention head's KV cache keeping only its rule's "
                      "sinks and recent frames",
             "redraw": "redraw: the unmodified model from a second noise draw (the noise floor)"}
    present = set(summary.intervention) | ({"diagonal"} if "diagonal-tuned" in set(summary.intervention) else set())
    kinds = [text for kind, text in words.items() if kind in present]
    return {"info": info, "name": interventions.get("name", ""), "claims": claims, "table": table, "figures": figs,
            "kinds": kinds,
            "reliance": _reliance(interventions), "plan": plan_table, "rollout": rollout, "heads": heads}


def _head_validation(table) -> dict:
    """A head plan's validation (`analyses.head_plan.head_validation_table`) as a plain table."""
    from analyses.head_plan import head_validation_table

    def cell(r, name: str, digits: int) -> str:
        mean, low, high = (getattr(r, f) for f in (name, f"{name}_low", f"{name}_high"))
        return "" if mean != mean else f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"

    rows = [[r.setting, cell(r, "bytes", 3), cell(r, "speed", 3), cell(r, "drift", 1), cell(r, "first", 1),
             cell(r, "last", 1), cell(r, "ssim_loss", 3), str(r.clips)]
            for r in head_validation_table(table).itertuples()]
    return {"columns": ["setting", "KV cache bytes / unmodified [95%]", "speed-up [95%]",
                        "drift PSNR, rollout, dB [95%]", "first frame", "last frame", "SSIM loss vs truth [95%]",
                        "clips"], "rows": rows}


def _rollout(table) -> dict:
    """A plan validation over a rollout: each setting's quality loss against the truth with its non-inferiority verdict
    (PLAN_SSIM_MARGIN, PLAN_PSNR_MARGIN_DB), and the model-gated rule and the per-block plan against TeaCache-style
    skipping at each matched share (PLAN_SPEED_TOLERANCE's definition of "beats")."""
    from analyses.plan import non_inferiority, rule_comparison

    margins = {name: THRESHOLDS[name].value for name in ("PLAN_SSIM_MARGIN", "PLAN_PSNR_MARGIN_DB",
                                                          "PLAN_SPEED_TOLERANCE")}
    quality = non_inferiority(table, margins["PLAN_SSIM_MARGIN"], margins["PLAN_PSNR_MARGIN_DB"])
    rows = [[r.setting, f"{r.ssim_loss:.3f} [{r.ssim_loss_low:.3f}, {r.ssim_loss_high:.3f}]",
             f"{r.psnr_loss:.2f} [{r.psnr_loss_low:.2f}, {r.psnr_loss_high:.2f}]", r.verdict, str(r.clips)]
            for r in quality.itertuples()]
    comparisons = []
    for rule in ("gated", "plan"):
        for r in rule_comparison(table, rule, "teacache", margins["PLAN_SSIM_MARGIN"],
                                 margins["PLAN_SPEED_TOLERANCE"]).itertuples():
            comparisons.append([f"{rule}{r.index} vs teacache{r.index}",
                                f"{r.drift_difference:+.1f} [{r.drift_difference_low:+.1f}, {r.drift_difference_high:+.1f}]",
                                f"{r.ssim_difference:+.3f} [{r.ssim_difference_low:+.3f}, {r.ssim_difference_high:+.3f}]",
                                f"{r.speed_ratio:.3f} [{r.speed_ratio_low:.3f}, {r.speed_ratio_high:.3f}]", r.verdict,
                                str(r.clips)])
    return {"quality": {"columns": ["setting", "SSIM loss vs truth [95%]", "PSNR loss vs truth, dB [95%]",
                                    f"non-inferior (SSIM < {margins['PLAN_SSIM_MARGIN']:g}, PSNR < "
                                    f"{margins['PLAN_PSNR_MARGIN_DB']:g} dB)", "clips"], "rows": rows},
            "comparison": {"columns": ["rule vs TeaCache-style, same share", "drift PSNR difference, dB [95%]",
                                       "SSIM vs truth difference [95%]", "speed-up ratio [95%]", "verdict", "clips"],
                           "rows": comparisons}}


def _plan_table(table, settings: dict) -> dict:
    """A plan validation's points with their intervals (`analyses.plan.speed_quality_table`) and what each setting is."""
    from analyses.plan import speed_quality_table

    def interval(mean: float, low: float, high: float, digits: int) -> str:
        return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"

    def what(name: str) -> str:
        s = settings.get(name) or {}
        return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in s.items())

    rows = [[p.setting, what(p.setting), interval(p.speedup, p.speedup_low, p.speedup_high, 2),
             interval(p.drift_psnr, p.drift_psnr_low, p.drift_psnr_high, 1), "yes" if p.pareto else "", p.clips]
            for p in speed_quality_table(table).itertuples()]
    return {"columns": ["setting", "what it is", "speed-up [95% interval]", "drift PSNR vs unmodified, dB [95%]",
                        "Pareto front", "clips"], "rows": rows}


def _reliance(interventions: dict) -> list[dict]:
    """Per layer, the quality cost of cutting it (or it and every later layer) off the past, against the truth
    (loss = unmodified minus knocked out, mean [95% interval] over clips)."""
    table = interventions["table"]
    reference = table[table.intervention == "none"].set_index("clip")
    rows = {}
    for kind, label in (("knockout-layer", "alone"), ("knockout", "from")):
        for layer, group in table[table.intervention == kind].groupby("layer"):
            psnr, ssim = quality_losses(group, reference)
            rows.setdefault(int(layer), {"layer": int(layer)})[label] = f"{shown(psnr, 2)} dB, SSIM {shown(ssim, 3)}"
    return [{"layer": k, "alone": v.get("alone", "not measured"), "from": v.get("from", "not measured")}
            for k, v in sorted(rows.items())]


def headline(measured: str, limit: int = SUMMARY_CHARS) -> str:
    """A claim's measured text for the summary: whole if short, else cut at the last clause boundary ("; " or ", "
    outside brackets, so that no interval is split) before `limit` characters, with " ..." where cut."""
    failed = measured.find("(not cleared: ")
    if failed > 0 and len(measured) > limit:  # what failed says more than the numbers that passed: the first, then it
        depth, end = 0, len(measured)
        for i in range(failed, len(measured)):  # the parenthesis that closes "(not cleared: ...", nested ones kept
            depth += {"(": 1, ")": -1}.get(measured[i], 0)
            if depth == 0:
                end = i
                break
        reason = measured[failed + 1:end]
        return headline(measured[:failed].rstrip(), max(40, limit - len(reason) - 5)) + " " + reason
    if len(measured) <= limit:
        return measured
    depth, cut = 0, 0
    for i, char in enumerate(measured[:limit]):
        depth += {"[": 1, "(": 1, "]": -1, ")": -1}.get(char, 0)
        if depth == 0 and measured.startswith(("; ", ", "), i):
            cut = i
    return (measured[:cut] if cut else measured[:limit]) + " ..."


def _summary(sections: list[dict], parts: list[dict]) -> dict:
    """The report's first screen: each claim on the first run that is no control (its verdict, its numbers, the
    other runs' verdicts beside it), each causal test once, a caching plan's Pareto front, and one sentence of counts."""
    trained = next((s for s in sections if not s["control"]), sections[0])
    others = [s for s in sections if s is not trained]
    rows = [{"claim": c.name, "verdict": c.verdict, "number": headline(c.measured), "anchor": trained["id"],
             "others": [o["claims"][i].verdict for o in others]} for i, c in enumerate(trained["claims"])]
    causal, seen = [], set()
    for part in parts:
        for c in part["claims"]:
            if c.name not in seen:
                seen.add(c.name)
                causal.append({"claim": c.name, "verdict": c.verdict, "number": headline(c.measured),
                               "anchor": part["id"], "source": part["name"]})
    counts = Counter(r["verdict"] for r in rows + causal)
    order = ("reproduced", "inconclusive", "not observed in this model", "not reproduced", "not measured")
    tally = ", ".join(f"{counts[v]} {v}" for v in order if counts[v])
    sentence = (f"{len(rows)} claims of the paper tested on {trained['name']} ({trained['scale']})"
                + (f" and {len(causal)} causal tests" if causal else "") + f": {tally}.")
    controls = [s for s in sections if s["control"]]
    if controls:
        hits = sum(c.verdict == "reproduced" for s in controls for c in s["claims"])
        sentence += (f" Its random-weight control{'s' if len(controls) > 1 else ''} "
                     f"({', '.join(s['name'] for s in controls)}), which must never come out reproduced: reproduced on "
                     f"{hits} claim{'' if hits == 1 else 's'}.")
    plans = []
    for part in parts:
        if part["plan"]:
            points = part["plan"]["rows"]
            front = [r for r in points if r[4] == "yes"]
            mine = [r for r in points if r[0].startswith("plan")]
            plans.append({"anchor": part["id"], "source": part["name"], "front": [
                f"{r[0]}: {r[2]}x, drift {r[3]} dB" for r in front],
                "verdict": f"the per-block plan is on the front at {sum(r[4] == 'yes' for r in mine)} of its "
                           f"{len(mine)} budgets"})
    return {"sentence": sentence, "columns": [o["name"] for o in others], "trained": trained["name"], "rows": rows,
            "causal": causal, "plans": plans}


def _shared_scales(named: dict[str, Recording]) -> dict:
    """Colour ranges every run's figures share, so that a model and its control are compared by eye on one scale:
    the attention maps' ln p range, the per-key ratio heatmap's span, the similarity heatmaps' floor."""
    scales = {}
    attention = [run for run in named.values() if run.attention_layers]
    if attention:
        ranges = [r for r in (paper_figures.attention_map_range(run) for run in attention) if math.isfinite(r[0])]
        if ranges:
            scales["attention"] = (min(r[0] for r in ranges), max(r[1] for r in ranges))
        scales["ratio_span"] = max(paper_figures.ratio_span(run) for run in attention)
    features = [run for run in named.values() if run.stepwise_layers]
    if features:
        scales["similarity_vmin"] = min(figures.similarity_floor(run) for run in features)
    return scales


def _contents(sections: list[dict], parts: list[dict], bench: bool, emergence: bool, overlays: bool) -> list[dict]:
    """The contents list, in the report's order: every section's anchor and title (the template uses the same ids)."""
    plan_parts = [p for p in parts if p["plan"]]
    other_parts = [p for p in parts if not p["plan"]]
    items = [{"id": "summary", "title": "What was found", "children": []}]
    items += [{"id": p["id"], "title": p["title"], "children": []} for p in plan_parts]
    items.append({"id": "claims", "title": "Claims, run by run",
                  "children": [{"id": s["id"], "title": s["claims_title"]} for s in sections]})
    items.append({"id": "thresholds", "title": "Thresholds and their provenance", "children": []})
    if overlays:
        items.append({"id": "across-depth", "title": "Across depth", "children": []})
    if bench:
        items.append({"id": "bench", "title": "Speed and quality (probe bench)", "children": []})
    items += [{"id": p["id"], "title": p["title"], "children": []} for p in other_parts]
    if emergence:
        items.append({"id": "emergence", "title": "The emergence study", "children": []})
    items.append({"id": "runs", "title": "The runs: settings, figures and tables by layer",
                  "children": [{"id": s["run_id"], "title": s["run_title"]} for s in sections]})
    return items


def markdown_lines(text: str) -> list[Markup]:
    """The few Markdown marks the study's answer uses (**bold**, `code`, "- " items) as HTML, every character of the
    text escaped first: one safe paragraph per line (an item keeps its bullet), blank lines dropped."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        html = str(escape(line.strip()))
        html = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html)
        html = re.sub(r"`(.+?)`", r"<code>\1</code>", html)
        out.append(Markup("&bull; " + html[2:] if html.startswith("- ") else html))
    return out


def _emergence_section(study: dict) -> dict:
    """The emergence study (`analyses.emergence.load_study`): its answer, seed table and figures, from its cards."""
    from analyses.emergence import answer, runs_table, seed_table, table_markdown
    from analyses.emergence_figures import curve_figure, effects_figure, maps_figure

    cards = study["cards"]
    table = seed_table(cards)
    shown = table_markdown(table)
    depth = int(cards[0]["training"]["model"]["depth"]) if cards else 8
    runs = runs_table(cards)
    return {"cards": cards, "answer": markdown_lines(answer(cards)),
            "table": {"columns": list(shown.columns),  # the reference's effect against itself does not apply: empty
                      "rows": [["" if v == "-" else v for v in row] for row in shown.astype(str).values.tolist()]},
            "runs": {"columns": list(runs.columns), "rows": runs.astype(str).values.tolist()},
            "figures": {"Each factor's effect on each layer's ln per-key ratio, Welch 95% intervals over seeds":
                        png_data_uri(effects_figure(table, depth)),
                        "Over training: quality, the last layer's ratio and finding 1, per condition (intervals over "
                        "seeds)": png_data_uri(curve_figure(cards)),
                        "The paper's figure layers' log maps, one row per condition": png_data_uri(
                            maps_figure(cards, study["maps"]))}}


def render(runs: list[Recording], bench: dict | None = None, interventions: dict | list[dict] | None = None,
           emergence: dict | None = None, progress: bool = False) -> str:
    """The report's HTML for these runs (and a `probe bench` directory's tables, from `load_bench`, a
    `probe intervene` directory's, from `load_interventions`, and a `probe emergence` study's, from
    `analyses.emergence.load_study`); `progress`: a bar over its parts (the overlays, each run, each table)."""
    from scd.progress import progress as progress_bar

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined)
    listed = [] if interventions is None else [interventions] if isinstance(interventions, dict) else interventions
    bar = progress_bar(total=1 + len(runs) + (bench is not None) + len(listed) + (emergence is not None),
                       desc="report", unit="part", disable=not progress)
    named = {run_name(run): run for run in runs}
    overlays = {}
    with_features = {name: run for name, run in named.items() if run.stepwise_layers}
    with_attention = {name: run for name, run in named.items() if run.attention_layers}
    if with_features:
        overlays["Cross-step similarity vs depth"] = png_data_uri(figures.similarity_vs_depth(with_features))
    if with_attention:
        overlays["Attention on earlier frames vs depth (band: spread over heads)"] = png_data_uri(
            figures.attention_vs_depth(with_attention))
    bar.update()
    try:
        version = metadata.version("scd-probes")
    except metadata.PackageNotFoundError:
        version = "?"

    def step(part):  # one part of the report, counted
        bar.update()
        return part

    scales = _shared_scales(named)
    sections = [step(_section(run, scales)) for run in runs]
    for i, section in enumerate(sections):
        section |= {"id": f"claims-{i + 1}", "claims_title": f"Claims on {section['name']}",
                    "run_id": f"run-{i + 1}", "run_title": f"Run {section['name']}"}
    thresholds = [{"name": t.name, "value": f"{t.value:g}", "test": t.test, "provenance": t.provenance(),
                   "post_hoc": t.post_hoc} for t in THRESHOLDS.values()]
    bench_part = step(_bench_section(bench)) if bench is not None else None
    intervention_parts = [step(_interventions_section(i)) for i in listed]
    names = Counter(part["name"] for part in intervention_parts)
    for i, part in enumerate(intervention_parts):
        if names[part["name"]] > 1:  # one directory given twice, or two of one name: headings stay distinct
            part["name"] = f"{part['name'] or 'interventions'} #{i + 1}"
        what = "A caching plan, validated" if part["plan"] else "Interventions"
        part |= {"id": f"interventions-{i + 1}",
                 "title": f"{what} on {part['info'].get('model')}: {part['name'] or i + 1} (probe intervene)"}
    emergence_part = step(_emergence_section(emergence)) if emergence is not None else None
    bar.close()
    return env.get_template("report.html.j2").render(
        sections=sections, overlays=overlays, version=version, summary=_summary(sections, intervention_parts),
        contents=_contents(sections, intervention_parts, bench_part is not None, emergence_part is not None,
                           bool(overlays)),
        thresholds=thresholds, lit_cut=THRESHOLDS["LIT_CUT_NATS"].value, bench=bench_part,
        interventions=intervention_parts, emergence=emergence_part,
        created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"))


def write_report(run_paths: list[str | Path], out: str | Path, bench: str | Path | None = None,
                 interventions: str | Path | list[str | Path] | None = None, force: bool = False,
                 emergence: str | Path | None = None, progress: bool = False) -> Path:
    """Read the runs (and a `probe bench` and a `probe intervene` directory), render, and write `out`
    atomically; a RunError for a bad run, bench or interventions directory, or output path. An existing
    `out` is replaced only with `force`, and only if it is a report this toolkit wrote. `progress`: a bar over the
    report's parts (`probe report` shows it; 1-3 minutes for the committed reports on 2 cores)."""
    out = input_path(out, "-o", "a path ending in .html", RunError)
    if out.suffix.lower() not in (".html", ".htm"):
        raise RunError(f"-o {str(out)!r} is not an .html file; accepted: a path ending in .html")
    try:
        check_output(out, "report", force, flag="-o")
    except OutputError as e:
        raise RunError(str(e)) from None
    if not run_paths:
        raise RunError("no run directory given; accepted: one or more directories written by probe run")
    if isinstance(run_paths, str | Path) or not isinstance(run_paths, Iterable):
        raise RunError(f"run_paths {run_paths!r}; accepted: a list of run directories")
    runs, seen = [], {}
    for given in run_paths:
        runs.append(load_run(given))  # checked as a path and as a run
        where = runs[-1].path.resolve()
        if where in seen:
            raise RunError(f"run {given} is given twice (as {seen[where]} before); accepted: each run once")
        seen[where] = str(given)
    def read(loader, path):  # a bench or interventions directory, its problem as a RunError
        try:
            return None if path is None else loader(path)
        except ValueError as e:
            raise RunError(str(e)) from None

    directories = [] if interventions is None else [interventions] if isinstance(interventions, str | Path) else interventions
    from analyses.emergence import load_study

    html = render(runs, read(load_bench, bench), [read(load_interventions, d) for d in directories],
                  read(load_study, emergence), progress=progress)
    try:
        with atomic_file(out, new=not force) as tmp:  # a second writer of the same report, racing, does not replace it
            tmp.write_text(html, encoding="utf-8")
    except OutputError as e:
        raise RunError(str(e)) from None
    return out
