"""The RL attack benchmark end to end at smoke size, its argument checks, and the notebook executed top to bottom."""

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

from benchmarks import rl_attack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_benchmark_quick_writes_every_figure_and_the_compute_record(tmp_path):
    results = rl_attack.main(["--quick", "--out", str(tmp_path)])
    with open(tmp_path / "results.json") as f:
        saved = json.load(f)
    assert set(saved["fig3"]) == {"iid/krum", "q_noniid/krum"}
    for block in saved["fig3"].values():
        assert set(block["final"]) == {"none", "eb", "ipm", "lmp", "rl"}
        assert all(len(curve) == 2 and len(curve[0]) == len(saved["eval_rounds"]) for curve in block["curves"].values())
    assert set(saved["claim"]) == {"iid/krum", "q_noniid/krum"}
    assert set(saved["fig4a"]["final"]) == {"2", "4"}
    assert set(saved["fig4c"]["final"]) >= {"RL", "RL w/o DL", "RL0"}
    compute = saved["compute"]
    assert compute["distribution_s"] > 0 and compute["policy_s"] > 0 and compute["na_fl_rounds_s"] > 0
    assert compute["simulated_rounds_per_s_median"] > 0 and compute["real_rounds_per_s_median"] > 0
    assert saved["environment"]["devices"]
    for name in ("fig3.png", "fig4a.png", "fig4c.png"):
        assert (tmp_path / name).exists()
    assert results["config"]["quick"]


def test_benchmark_rejects_unknown_figures_and_aggregators():
    with pytest.raises(ValueError, match="--figures"):
        rl_attack.parse_args(["--figures", "fig9"])
    with pytest.raises(ValueError, match="--aggregators"):
        rl_attack.parse_args(["--aggregators", "krum,bogus"])


@pytest.mark.slow
def test_notebook_runs_the_three_phases():
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "rl_attack.ipynb"), as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "RLAttackConfig.tau_e" in outputs and "action_low/action_high" in outputs
    assert "final accuracy:" in outputs and "P~ rows: reconstructions" in outputs
    assert "8 simulated rounds at once" in outputs
