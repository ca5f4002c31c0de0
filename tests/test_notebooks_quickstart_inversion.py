"""notebooks/quickstart.ipynb and notebooks/inversion.ipynb top to bottom at toy size (QUICK = True); their
results double as checks that the attacks and defenses behave."""

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _execute(name, replace=(), report=""):
    nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
    assert "QUICK = True" in nb.cells[1].source and "REPO_URL" in nb.cells[1].source  # the setup cell
    for old, new in replace:
        cells = [c for c in nb.cells if old in c.source]
        assert cells, old
        for cell in cells:
            cell.source = cell.source.replace(old, new)
    nb.cells.append(nbformat.v4.new_code_cell(f"import json\nprint('METRICS', json.dumps({report}))"))
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                 if "image/png" in o.get("data", {}))
    return outputs, images, json.loads(outputs.split("METRICS", 1)[1].strip().splitlines()[0])


@pytest.mark.slow
def test_quickstart_notebook_matrix_ipm_breaks_the_mean_not_the_robust_rules(tmp_path):
    outputs, images, matrix = _execute(
        "quickstart.ipynb", replace=[('"results/notebook_quickstart"', repr(str(tmp_path)))],
        report="{a: {g: float(curves[a, g][:, -1].mean()) for g in AGGREGATORS} for a in ATTACKS}")
    assert "backend cpu" in outputs and images == 2  # the curves and the heatmap
    assert matrix["none"]["mean"] > 0.7 and matrix["ipm"]["mean"] < 0.3
    for rule in ("median", "krum", "clipped_median"):
        assert matrix["ipm"][rule] > matrix["ipm"]["mean"] + 0.2, matrix
    assert (tmp_path / "accuracy.csv").exists() and (tmp_path / "accuracy.meta.json").exists()


@pytest.mark.slow
def test_inversion_notebook_reconstructs_and_dp_noise_degrades_it():
    outputs, images, metrics = _execute("inversion.ipynb", report="{'scores': scores, 'noise_psnr': noise_psnr}")
    assert images == 2  # the reconstruction grid and the noise sweep
    for name in ("DLG", "inverting gradients"):
        assert metrics["scores"][name]["psnr"] > 20 and metrics["scores"][name]["label_accuracy"] == 1.0
    psnr = metrics["noise_psnr"]
    assert psnr[0] > psnr[-1] + 5 and psnr[0] >= psnr[1] - 1, psnr
