"""The DecByzPG benchmark script end to end at smoke size, and the notebook executed top to bottom."""

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

from benchmarks import decbyzpg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow  # the benchmark end to end at --quick size
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
    for curve in curves.values():  # both variants ran in one program; greedy returns beside the sampled ones
        assert curve["group"] == sorted(curves) or set(curve["group"]) == set(curves)
        assert len(curve["greedy_mean"]) == len(curve["trajectories"])
        assert 0 < curve["final_greedy_mean"] <= 40  # the quick run's horizon
    assert results["environment"]["devices"]
    assert (tmp_path / "CartPole-v1_dec_large_noise.png").exists()


@pytest.mark.slow
def test_notebook_runs_and_large_noise_breaks_dec_page_pg_but_not_decbyzpg():
    """The notebook top to bottom; its toy CartPole run (K = 5, f = 1, LargeNoise) doubles as the check that
    LargeNoise stalls Dec-PAGE-PG and pulls its agents apart, while DecByzPG learns with agents in agreement."""
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "decbyzpg.ipynb"), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json\n"
        "print('METRICS', json.dumps({name: {'first': float(h['returns'][:, :10].mean()),\n"
        "    'last': float(h['returns'][:, -10:].mean()), 'diameter': float(h['diameter'][:, -1].max())}\n"
        "    for name, h in histories.items()}))"))
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "after MDA" in outputs
    metrics = json.loads(outputs.split("METRICS", 1)[1].strip().splitlines()[0])
    dec, robust = metrics["Dec-PAGE-PG"], metrics["DecByzPG"]
    assert robust["diameter"] < 1e-3 < dec["diameter"]
    assert robust["last"] > robust["first"] + 20 and robust["last"] > dec["last"] + 20
    assert dec["last"] < 40  # the undefended federation does not learn


def test_benchmark_rejects_nonsense_sizes():
    with pytest.raises(ValueError, match="seeds"):
        decbyzpg.parse_args(["--seeds", "0"])
    with pytest.raises(ValueError, match="chunk"):
        decbyzpg.parse_args(["--chunk", "-1"])


def test_default_chunk_gives_a_greedy_curve_of_many_points():
    """0 = 16 iterations (64 blocks) per call on long runs, fewer on short ones: a run of a few dozen iterations
    still gets about ``GREEDY_POINTS`` greedy evaluations instead of one or two (a flat dotted line)."""
    from fedjax_attacks import frl
    chunk = lambda argv, preset: decbyzpg.default_chunk(decbyzpg.parse_args(argv), preset)
    assert chunk(["--steps", "iterations", "--max-trajectories", "100000"], frl.CARTPOLE) == 16
    assert chunk(["--steps", "blocks", "--max-trajectories", "100000"], frl.CARTPOLE) == 64
    assert chunk(["--steps", "iterations"], frl.CARTPOLE) == 15  # 5000 / (0.2 * 50 + 0.8 * 4) = 379 iterations
    assert chunk(["--steps", "blocks"], frl.CARTPOLE) == 50  # 5000 / 4 = 1250 blocks
    assert chunk(["--steps", "iterations", "--max-trajectories", "1000"], frl.ACROBOT) == 1  # 22 iterations
    assert decbyzpg.parse_args(["--chunk", "3"]).chunk == 3
