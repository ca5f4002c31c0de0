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
        assert set(block["final"]) == {"none", "eb", "eb_authors", "ipm", "lmp", "lmp_authors", "rl"}
        assert all(len(curve) == 2 and len(curve[0]) == len(saved["eval_rounds"]) for curve in block["curves"].values())
    assert set(saved["claim"]) == {"iid/krum", "q_noniid/krum"}
    for verdict in saved["claim"].values():  # the claim is against the correct baselines only
        assert verdict["best_baseline"] in ("eb", "ipm", "lmp") and verdict["best_authors_variant"].endswith("_authors")
    for setting in ("iid/krum", "q_noniid/krum"):
        diagnostic = saved["policy_diagnostic"][setting]
        assert len(diagnostic["action_std"]) == 3 and len(diagnostic["action_std_final_per_seed"]) == 2
        assert 0 <= diagnostic["state_dependent_share"] <= 1
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


def _results(seeds=5):
    final = {"none": {"mean": 0.9, "std": 0.01}, "lmp": {"mean": 0.2, "std": 0.1}, "rl": {"mean": 0.1, "std": 0.05}}
    config = {**vars(rl_attack.parse_args([])), "seeds": seeds, "krum_variant": "authors"}
    return {"config": config, "environment": {"devices": ["cpu:cpu"]},
            "aggregator_hparams": {"krum": {"num_byzantine": 2, "variant": "authors"}},
            "fig3": {"iid/krum": {"final": final}},
            "claim": {"iid/krum": {"rl": 0.1, "best_baseline": "lmp", "best_baseline_acc": 0.2,
                                   "rl_below_every_baseline_by": 0.1, "holds": True}}}


def test_readme_tables_come_from_results_json_with_confidence_intervals(tmp_path):
    """The rendered table holds each mode's mean +- 1.96 std / sqrt(n - 1) (std over the n seeds), the flags of
    the run, and the claim; only the marked README section is replaced."""
    table = rl_attack.readme_tables(_results(seeds=5))
    assert "| iid/krum | 0.900 +- 0.010 | 0.200 +- 0.098 | 0.100 +- 0.049 |" in table
    assert "--krum-variant authors" in table and "--seeds 5" in table
    assert "iid/krum: RL 0.100 vs the best baseline (lmp) 0.200: holds (margin +0.100)" in table
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- rl_attack:begin -->\nold table\n<!-- rl_attack:end -->\noutro\n")
    path = tmp_path / "results.json"
    path.write_text(json.dumps(_results()))
    rl_attack.main(["--render-readme", str(path), "--readme", str(readme)])
    text = readme.read_text()
    assert "old table" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    assert "0.200 +- 0.098" in text
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers <!-- rl_attack:begin -->"):
        rl_attack.main(["--render-readme", str(path), "--readme", str(readme)])
