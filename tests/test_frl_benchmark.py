"""The DecByzPG benchmark script end to end at smoke size, and the notebook executed top to bottom."""

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

from benchmarks import decbyzpg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_quick_writes_results_and_plots(tmp_path):
    decbyzpg.main(["--quick", "--figures", "attacks", "--out", str(tmp_path)])
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    curves = results["figures"]["CartPole-v1/dec"]
    assert set(curves) == {"Dec-PAGE-PG K=4 large_noise", "DecByzPG K=4 large_noise"}
    for curve in curves.values():
        assert len(curve["mean"]) == len(curve["trajectories"]) > 0
        assert curve["trajectories"][-1] <= results["config"]["max_trajectories"]
    assert curves["DecByzPG K=4 large_noise"]["final_honest_diameter"] < 1e-3
    assert results["environment"]["devices"]
    assert (tmp_path / "CartPole-v1_dec_large_noise.png").exists()


@pytest.mark.slow
def test_notebook_runs_top_to_bottom():
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "decbyzpg.ipynb"), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "DecByzPG" in outputs and "after MDA" in outputs
