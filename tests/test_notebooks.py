"""The notebooks: committed clean, one `parameters` cell of small defaults each, the public API only, and
each one run top to bottom in a fresh kernel (papermill, as a researcher scaling one up would)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import papermill
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
NAMES = ["01_cross_step_similarity", "02_attention_sparsity", "03_scd_vs_baseline", "04_your_model",
         "05_interventions"]
FIGURES = {"01_cross_step_similarity": 6, "02_attention_sparsity": 7, "03_scd_vs_baseline": 7, "04_your_model": 5,
           "05_interventions": 2}  # figures each shows with its defaults
OURS = ("scd", "probes", "analyses")
# Libraries a notebook may use for data and layout; plotting itself belongs to analyses/figures.py.
ALLOWED = {"tempfile", "pathlib", "dataclasses", "numpy", "pandas", "torch", "IPython", "diffusers", *OURS}


def code_of(path: Path) -> list[str]:
    return [cell.source for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]


def execute(path: Path, out: Path, **parameters) -> nbformat.NotebookNode:
    """Run a notebook top to bottom in a new kernel, from its own directory (as Jupyter does); raises
    papermill.PapermillExecutionError at the first failing cell."""
    saved = {name: os.environ.get(name) for name in ("MPLBACKEND", "OMP_NUM_THREADS")}
    os.environ.pop("MPLBACKEND", None)  # as in a fresh shell: the kernel picks the inline backend
    os.environ["OMP_NUM_THREADS"] = "1"  # one thread per kernel, as the tests pin theirs: parallel workers' kernels
    try:                                 # would otherwise oversubscribe the cores (10x slower on 2 cores)
        papermill.execute_notebook(str(path), str(out), parameters=parameters, kernel_name="python3",
                                   cwd=str(path.parent), progress_bar=False, log_output=False)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return nbformat.read(out, as_version=4)


def outputs(nb: nbformat.NotebookNode, output_type: str | None = None, mime: str | None = None) -> list:
    found = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    found = [o for o in found if output_type is None or o.output_type == output_type]
    return [o for o in found if mime is None or mime in o.get("data", {})]


def stdout(nb: nbformat.NotebookNode) -> str:
    return "".join(o.text for o in outputs(nb, "stream") if o.name == "stdout")


def test_the_notebooks_are_there():
    assert [p.stem for p in NOTEBOOKS] == NAMES


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_or_execution_counts(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name}: strip it (see README)"
        assert set(cell.metadata) <= {"tags"}, f"{path.name}: cell metadata {sorted(cell.metadata)}"
    assert set(nb.metadata) <= {"kernelspec", "language_info"}, f"{path.name}: notebook metadata {sorted(nb.metadata)}"
    # The README's way of stripping them has nothing left to do.
    verify = subprocess.run([sys.executable, "-m", "nbstripout", "--verify", str(path)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_one_parameters_cell_of_plain_assignments_first(path):
    cells = nbformat.read(path, as_version=4).cells
    tagged = [i for i, cell in enumerate(cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged parameters"
    cell = cells[tagged[0]]
    assert cell.cell_type == "code"
    assert all(c.cell_type == "markdown" for c in cells[: tagged[0]]), "the parameters come before any code"
    body = ast.parse(cell.source).body
    assert body and all(isinstance(node, ast.Assign) for node in body), "only `name = value` lines"
    names = {target.id for node in body for target in node.targets}
    for node in body:  # literals only, so papermill can override any of them from a shell
        ast.literal_eval(node.value)
    assert "device" in names and ast.literal_eval(next(n.value for n in body if n.targets[0].id == "device")) == "cpu"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_public_api_only_and_no_plotting_code_of_their_own(path):
    for source in code_of(path):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                for module in modules:
                    assert module.split(".")[0] in ALLOWED, f"{path.name} imports {module}"
                    assert not any(part.startswith("_") for part in module.split(".")), f"{path.name} imports {module}"
                if isinstance(node, ast.ImportFrom):
                    private = [a.name for a in node.names if a.name.startswith("_")]
                    assert not private, f"{path.name} imports private {private} from {node.module}"
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                raise AssertionError(f"{path.name} uses private attribute {node.attr}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in {"plot", "imshow", "subplots", "heatmap", "scatter", "bar"}, \
                    f"{path.name} draws with {node.func.attr}(); figures come from analyses.figures"


def test_a_failing_cell_fails_the_run_and_stops_it(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell("raise RuntimeError('cell 2 fails')"),
                                         nbformat.v4.new_code_cell("print('after')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "failing.ipynb")
    with pytest.raises(papermill.PapermillExecutionError, match="cell 2 fails"):
        execute(tmp_path / "failing.ipynb", tmp_path / "out.ipynb")
    ran = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert "after" not in stdout(ran)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_top_to_bottom_with_its_defaults(path, tmp_path):
    nb = execute(path, tmp_path / path.name)
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code_cells), "every code cell ran"
    assert not outputs(nb, "error")
    figures = outputs(nb, mime="image/png")
    assert len(figures) == FIGURES[path.stem], f"{path.name} showed {len(figures)} figures"
    text = stdout(nb)
    if path.stem == "04_your_model":  # the two backends record the same video
        assert "same video: True" in text
    if path.stem == "01_cross_step_similarity":
        assert "Most step-invariant layer" in text


@pytest.fixture(scope="module")
def existing_runs(tmp_path_factory):
    """Runs written by `probe run` (few layers, one frame), for the notebooks to analyse without probing."""
    from probe_cli import main

    root = tmp_path_factory.mktemp("runs")
    runs = {"baseline": root / "baseline", "scd": root / "scd"}
    assert main(["run", "--layers", "0,15,27,28,29", "--frames", "1", "--out", str(runs["baseline"]), "--quiet"]) == 0
    assert main(["run", "--model", "scd", "--layers", "3,18,25,33,34", "--frames", "1", "--out", str(runs["scd"]),
                 "--quiet"]) == 0
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES[:3] + NAMES[4:])
def test_analyses_an_existing_run_directory_instead_of_probing(name, existing_runs, tmp_path):
    path = ROOT / "notebooks" / f"{name}.ipynb"
    if name == "03_scd_vs_baseline":
        parameters = {"baseline_run_dir": str(existing_runs["baseline"]), "scd_run_dir": str(existing_runs["scd"]),
                      "bench_dir": str(ROOT / "reports" / "bench")}
    elif name == "05_interventions":
        parameters = {"interventions_dir": str(ROOT / "reports" / "interventions")}
    else:
        parameters = {"run_dir": str(existing_runs["baseline"])}
    nb = execute(path, tmp_path / path.name, **parameters)
    assert not outputs(nb, "error")
    text = stdout(nb)
    streams = "".join(o.text for o in outputs(nb, "stream"))
    if name == "05_interventions":  # the committed reference, shown: nothing measured again
        assert "interventions:" not in streams and len(outputs(nb, mime="image/png")) == 2
    elif name == "03_scd_vs_baseline":
        assert "30 blocks (causal 0..29), 50 steps" in text and "35 blocks (encoder 3..18, decoder 25..34)" in text
        assert "bench speed" not in streams  # the bench was read, not run
    else:
        assert f"frames [4], 50 steps -> {existing_runs['baseline']}" in text
        assert "probe-notebook-" not in text  # nothing was probed into a temporary directory


def test_the_dev_install_brings_jupyterlab_and_a_kernel_that_sees_the_toolkit():
    from jupyter_client.kernelspec import KernelSpecManager

    lab = subprocess.run([sys.executable, "-m", "jupyterlab", "--version"], capture_output=True, text=True)
    assert lab.returncode == 0 and lab.stdout.strip()[0].isdigit(), lab.stderr
    spec = KernelSpecManager().get_kernel_spec("python3")
    probe = subprocess.run([spec.argv[0], "-c", "import scd, probes, analyses, ipykernel"], capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
