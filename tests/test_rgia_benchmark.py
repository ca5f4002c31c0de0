"""benchmarks/rgia.py end to end at smoke size, its argument checks, and notebooks/rgia.ipynb top to bottom."""

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

from benchmarks import rgia as bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_benchmark_quick_writes_results_claims_and_plots(tmp_path):
    out = str(tmp_path / "rgia")
    bench.main(["--quick", "--out", out, "--steps", "30", "--restarts", "2", "--targets", "2",
                "--batch-sizes", "1,4", "--noise-variances", "0,1e-2", "--noise-seeds", "1", "--eval-episodes", "2",
                "--speed-restarts", "2", "--replay-scale", "0.02", "--dynamics-steps", "50"])
    with open(os.path.join(out, "results.json")) as f:
        res = json.load(f)
    assert res["environment"]["devices"]
    table = res["figures"]["tables"]["CartPole-v1"]
    assert set(table) == {"trained", "untrained", "prior_mean"}
    assert list(table["trained"]) == list(bench.VARIANTS)
    for row in table["trained"].values():
        assert 0.0 <= row["ra"] <= 1.0 and row["mse"] >= 0 and row["te"] >= 0 and row["ed"] >= 0
        assert row["true_te"] == pytest.approx(0.0, abs=1e-5) and -1.0 <= row["ss"] <= 1.0
    assert [(r["net"], r["batch_size"]) for r in res["figures"]["batch_sweep"]] == [
        ("trained", 1), ("untrained", 1), ("trained", 4), ("untrained", 4)]
    noise = res["figures"]["noise_sweep"]
    assert [r["variance"] for r in noise] == [0.0, 1e-2] and all("victim_return" in r for r in noise)
    speed = res["figures"]["speed"]
    assert speed["restarts"] == 2 and speed["vmapped_s"] > 0 and speed["sequential_s"] > 0  # both timed, in one run
    assert set(res["claims"]) == {"rgia_lower_mse_higher_ra_everywhere", "ed_falls_60pct_and_ss_doubles",
                                  "batch_above_3_mostly_fails", "noise_1e-2_stops_reconstruction"}
    assert res["victims"]["CartPole-v1"]["prior_samples"] == 10  # 0.3% of 3200 transitions
    for png in ("rgia_batch.png", "rgia_noise.png", "rgia_states.png"):
        assert os.path.exists(os.path.join(out, png))


def test_benchmark_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown environment 'Breakout'"):
        bench.parse_args(["--envs", "Breakout"])
    with pytest.raises(ValueError, match="unknown regularizer name 'entropy'"):
        bench.parse_args(["--weights", "entropy=1"])
    with pytest.raises(ValueError, match="--targets"):
        bench.parse_args(["--targets", "1"])
    args = bench.parse_args(["--weights", "dynamics=0.5"])
    assert args.weights["dynamics"] == 0.5 and args.envs == list(bench.rgia_envs.ENV_NAMES)


@pytest.mark.slow
def test_notebook_runs_and_rgia_beats_gia_on_cartpole_at_the_untrained_network():
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "rgia.ipynb"), as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    rows = [line.split() for line in outputs.splitlines() if " MSE " in line]
    mse = {(r[0], r[1], r[2]): float(r[4]) for r in rows}
    assert set(mse) == {(env, net, method) for env in ("CartPole-v1", "brax:hopper")
                        for net in ("trained", "untrained") for method in ("GIA", "RGIA")}
    assert mse[("CartPole-v1", "untrained", "RGIA")] < 0.1 * mse[("CartPole-v1", "untrained", "GIA")]
