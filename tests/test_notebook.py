"""Notebooks: a real Jupyter kernel (ipykernel, run by nbclient) shows a pipeline, its run and the live progress."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent


def _notebook(work: Path) -> object:
    cells = [
        f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from resources import pipelines as res",
        "res.arithmetic",  # the pipeline displays as its graph
        "run = res.arithmetic.run(n=6)\nrun",  # progress while it runs, then the run with its coloured graph
        "res.arithmetic.run(n=6).status",  # the second run: every step a cache hit
    ]
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(work)}}, allow_errors=False
    )
    return client.execute()


def test_pipeline_run_and_progress_render_in_a_real_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    # the kernel runs this interpreter (with mlpipe installed), whatever kernels the machine has
    spec_dir = tmp_path / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "mlpipe tests",
        "language": "python",
        "env": {"MLFLOW_DISABLE_TELEMETRY": "true"},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    assert KernelSpecManager().find_kernel_specs()["python3"] == str(spec_dir)
    nb = _notebook(tmp_path)
    graph_out = nb.cells[1].outputs[0]
    assert graph_out.output_type == "execute_result"
    assert graph_out.data["text/html"].startswith('<div class="mlpipe-pipeline"><b>pipeline arithmetic</b>')
    assert graph_out.data["text/html"].count('<g class="step"') == 6

    outputs = nb.cells[2].outputs
    progress = [o for o in outputs if o.output_type == "display_data"]
    assert len(progress) == 1 and "mlpipe-progress" in progress[0].data["text/html"]
    # nbclient applies update_display_data to the output in place: it holds the final state of the run
    final = progress[0].data["text/html"]
    assert "6/6 steps" in final and "succeeded</b> in" in final
    for step in ("numbers", "split", "halves", "total", "add", "add_2"):
        assert f"</span>{step} " in final
    result = next(o for o in outputs if o.output_type == "execute_result").data["text/html"]
    assert result.startswith('<div class="mlpipe-run"><b>run ') and result.count('data-status="succeeded"') == 6

    again = nb.cells[3].outputs
    assert next(o for o in again if o.output_type == "execute_result").data["text/plain"] == "'succeeded'"
    shown = next(o for o in again if o.output_type == "display_data").data["text/html"]
    assert shown.count(">cached</span>") == 6
    assert (tmp_path / ".mlpipe" / "runs").is_dir()  # the kernel ran in the notebook's directory
