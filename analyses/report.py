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
from importlib import metadata
from pathlib import Path

import jinja2
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from analyses import figures
from analyses.claims import evaluate, paper_layers
from analyses.similarity import depth_curve
from analyses.sparsity import sparsity_table
from probes.store import Run, RunError, load_run, unwritable_reason

TEMPLATES = Path(__file__).parent / "templates"


def png_data_uri(fig: Figure, dpi: int = 90) -> str:
    """A figure as a `data:image/png;base64,...` URI (the figure is closed)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def run_name(run: Run) -> str:
    """How a run is named in the report: its model, then its directory name."""
    return f"{run.manifest.get('model', '?')} ({run.path.name})"


def _section(run: Run) -> dict:
    m = run.manifest
    depth = int(m.get("config", {}).get("depth", 30))
    middle = paper_layers(depth)["middle"][0]
    pca_layer = middle if middle in run.feature_layers else (run.feature_layers[len(run.feature_layers) // 2]
                                                             if run.feature_layers else None)
    figs = {}
    if run.feature_layers:
        figs["Cross-step cosine similarity (frame being denoised, every step pair)"] = png_data_uri(
            figures.similarity_heatmaps(run))
        figs[f"PCA of layer {pca_layer} over the denoising steps"] = png_data_uri(figures.pca_strip(run, pca_layer))
    if run.attention_layers:
        figs["Attention mass by key-frame offset"] = png_data_uri(figures.offset_heatmap(run))
    figs["Context, generated and ground-truth frames"] = png_data_uri(figures.frames_figure(run))
    checkpoint = m.get("checkpoint") or {}
    summary = {
        "model": m.get("model"), "checkpoint sha256": checkpoint.get("sha256"), "run directory": str(run.path),
        "clip": f"{m.get('split', '?')} {m.get('clip', '?')}", "seed": m.get("seed"),
        "frames": f"{m.get('context')} context, probed {m.get('frames')}", "steps": len(m.get("steps", [])),
        "layers": m.get("layers"), "hook": m.get("hook"), "mode": m.get("mode"), "backend": m.get("backend"),
        "versions": ", ".join(f"{k} {v}" for k, v in (m.get("versions") or {}).items()),
        "git revision": m.get("git_revision"),
    }
    similarity = depth_curve(run).round(4).to_dict("records") if run.feature_layers else []
    sparsity = sparsity_table(run).round(4).to_dict("records") if run.attention_layers else []
    return {"name": run_name(run), "summary": summary, "claims": evaluate(run), "figures": figs,
            "similarity": similarity, "sparsity": sparsity}


def render(runs: list[Run]) -> str:
    """The report's HTML for these runs."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined)
    named = {run_name(run): run for run in runs}
    overlays = {}
    with_features = {name: run for name, run in named.items() if run.feature_layers}
    with_attention = {name: run for name, run in named.items() if run.attention_layers}
    if with_features:
        overlays["Cross-step similarity vs depth"] = png_data_uri(figures.similarity_vs_depth(with_features))
    if with_attention:
        overlays["Attention on earlier frames vs depth (band: spread over heads)"] = png_data_uri(
            figures.attention_vs_depth(with_attention))
    try:
        version = metadata.version("scd-probes")
    except metadata.PackageNotFoundError:
        version = "?"
    return env.get_template("report.html.j2").render(
        sections=[_section(run) for run in runs], overlays=overlays, version=version,
        created=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"))


def write_report(run_paths: list[str | Path], out: str | Path) -> Path:
    """Read the runs, render, and write `out` atomically; a RunError for a bad run or output path."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise RunError(f"-o must name an .html file, got {str(out)!r}")
    if out.is_dir():
        raise RunError(f"-o {out} is a directory; name an .html file")
    reason = unwritable_reason(out)
    if reason:
        raise RunError(f"-o {out} cannot be written ({reason})")
    if not run_paths:
        raise RunError("no run directory given; accepted: one or more directories written by probe run")
    runs = [load_run(path) for path in run_paths]
    html = render(runs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out
