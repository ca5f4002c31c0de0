"""benchmarks/rgia.py: the claims and README renderer on toys, end to end at smoke size, its argument checks, and
notebooks/rgia.ipynb top to bottom (the experiment's statistics and floors: tests/test_rgia.py)."""

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

from benchmarks import rgia as bench
from fedjax_attacks.rgia import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- claims and the README


def _ci(mean, half=0.01):
    return {"mean": mean, "lo": mean - half, "hi": mean + half}


def _row(mse, ra, success=0.0):
    return {"mse": _ci(mse), "ra": _ci(ra), **{f: _ci(ra) for f in bench.FIELDS}, "gme": _ci(0.1), "te": _ci(0.0),
            "success": _ci(success), "ed": 0.5, "cd": 0.7, "ss": 0.4}


def toy_results():
    """A small results.json: one env, two stages, a noise sweep of 3 ratios and 1 variance, the utility."""
    def cell(frac, gia_ra, rgia_ra, diff_ra_lo):
        rows = {"GIA": _row(1.0, gia_ra), "RGIA": _row(0.01, rgia_ra, 0.9), bench.NOISE_FLOOR: _row(0.8, 0.3),
                "GIA (cosine)": _row(1.1, 0.2), "prior mean": {k: _ci(0.4) for k in ("mse", "ra", *bench.FIELDS)}}
        return {"fraction": frac, "iteration": int(frac * 100), "victim_return": _ci(500.0 * frac + 10, 5),
                "grad_norm": 2.0, "rows": rows,
                "rgia_minus_gia": {"mse": {"mean": -0.99, "lo": -1.2, "hi": -0.8},
                                   "ra": {"mean": rgia_ra - gia_ra, "lo": diff_ra_lo, "hi": 0.6}}}

    tables = {"CartPole-v1": {"untrained": cell(0.0, 0.45, 0.97, 0.4), "trained": cell(1.0, 0.4, 0.42, -0.05)}}
    noise = [{"stage": "untrained", "kind": kind, "level": level, "ratio": _ci(ratio), "variance": var,
              "RGIA": _row(0.5, ra), "stopped": stopped}
             for kind, level, ratio, var, ra, stopped in (
                 ("variance", 1e-2, 0.8, 1e-2, 0.95, False), ("ratio", 1.0, 1.0, 0.02, 0.9, False),
                 ("ratio", 3.0, 3.0, 0.2, 0.2, True), ("ratio", 10.0, 10.0, 2.0, 0.5, False),
                 ("ratio", 30.0, 30.0, 20.0, 0.25, True))]
    utility = [{"variance": 0.0, "batch_size": 1, "return": _ci(480.0, 10), "per_seed": [470, 480, 490]},
               {"variance": 1e-2, "batch_size": 1, "return": _ci(120.0, 30), "per_seed": [90, 120, 150]}]
    config = {"targets": 32, "victim_seeds": 3, "restarts": 16, "steps": 500, "quick": False,
              "distance": "relative_l2", "noise_env": "CartPole-v1",
              "weights": {"state_mixture": 1e-3, "reward": 1.0, "dynamics": 0.1}}
    victims = {"CartPole-v1": {"kind": "dqn", "hidden": [64, 64], "timesteps": 300000, "prior_samples": 512}}
    results = {"config": config, "victims": victims, "wall_times": {"total_s": 1000.0},
               "figures": {"tables": tables, "noise_sweep": noise, "utility": utility, "batch_sweep": [],
                           "speed": {"restarts": 16, "vmapped_s": 1.0, "sequential_s": 4.0, "speedup": 4.0}}}
    results["claims"] = experiment.claims(tables, [], noise)
    return results


def test_claims_need_intervals_clear_of_zero_and_of_the_floors():
    verdicts = toy_results()["claims"]
    # untrained: MSE and RA differences clear of 0, RGIA RA 0.97 [0.96, 0.98] above both floors (0.4, 0.3)
    # trained: the RA difference's interval reaches below 0
    assert verdicts["rgia_beats_gia"]["held"] == {"CartPole-v1/untrained": True, "CartPole-v1/trained": False}
    # ratio 3 stops it but 10 does not: the stopping ratio is the one from which every larger level stops it
    stop = verdicts["noise_stops_rgia"]["untrained"]
    assert stop["first_stopping_ratio"] == 30.0 and stop["variance_1e-2_stops"] is False
    # where clean RGIA is at its floors (trained: RA 0.42 [0.41, 0.43], prior-mean floor 0.415) no
    # noise level is said to stop it
    trained = [{**r, "stage": "trained", "stopped": True} for r in toy_results()["figures"]["noise_sweep"]]
    tables = toy_results()["figures"]["tables"]
    tables["CartPole-v1"]["trained"]["rows"]["RGIA"]["ra"] = _ci(0.42)
    tables["CartPole-v1"]["trained"]["rows"]["prior mean"]["ra"] = _ci(0.415)
    moot = experiment.claims(tables, [], trained)["noise_stops_rgia"]["trained"]
    assert moot["clean_at_floor"] and moot["first_stopping_ratio"] is None


def test_readme_renderer_reproduces_a_small_results_json(tmp_path):
    results = json.loads(json.dumps(toy_results()))  # through JSON, as --render-from reads it
    text = bench.render_markdown(results)
    assert "32 targets x 3 victim seeds, 16 restarts, 500 Adam steps" in text
    assert "| CartPole-v1 | untrained (10) | RGIA | 0.01 [0, 0.02] | 0.97 [0.96, 0.98] |" in text
    assert "| CartPole-v1 | trained (510) | RGIA on noise | 0.8 [0.79, 0.81] | 0.3 [0.29, 0.31] |" in text
    assert "| CartPole-v1 | untrained | -0.99 [-1.2, -0.8] | 0.52 [0.4, 0.6] | 0.2 [0.19, 0.21] |" in text
    assert "| untrained | ratio 3 | 0.2 | 3 [2.99, 3.01] | 0.5 [0.49, 0.51] | 0.2 [0.19, 0.21] | 0 | yes |" in text
    assert "var 0.01: 120 [90, 150]" in text
    assert "in 1 of 2 settings: CartPole-v1/untrained." in text
    assert "untrained: stopped from ||n||/||g|| = 30, variance 1e-2 (ratio 0.8) does not stop it" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"# top\n\n{bench.BEGIN}\nold figures\n{bench.END}\n\n## after\n")
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    bench.main(["--render-from", str(path), "--write-readme", str(readme)])
    once = readme.read_text()
    assert once.startswith("# top\n\n" + bench.BEGIN + "\n**Batch 1, 32 targets")
    assert once.endswith(bench.END + "\n\n## after\n") and "old figures" not in once and text in once
    bench.write_readme(results, str(readme))
    assert readme.read_text() == once  # idempotent
    begin, end = bench.markers("paper")
    readme.write_text(f"{bench.BEGIN}\n{bench.END}\n{begin}\nx\n{end}\n")
    bench.write_readme(results, str(readme), "paper")
    assert readme.read_text() == f"{bench.BEGIN}\n{bench.END}\n{begin}\n{text}\n{end}\n"
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="has no section"):
        bench.write_readme(results, str(readme))


def test_readme_holds_the_rendered_section_between_its_markers():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    assert text.count(bench.BEGIN) == 1 and text.count(bench.END) == 1
    assert text.index("### Measured figures (RGIA") < text.index(bench.BEGIN) < text.index(bench.END)


# ---------------------------------------------------------------- the benchmark end to end, arguments, notebook


@pytest.mark.slow
def test_benchmark_quick_writes_results_claims_and_plots(tmp_path):
    out = str(tmp_path / "rgia")
    res = bench.main(["--quick", "--out", out, "--steps", "30", "--restarts", "2", "--targets", "3",
                      "--batch-sizes", "1,2", "--noise-variances", "1e-2", "--noise-ratios", "1,10",
                      "--eval-episodes", "2", "--speed-restarts", "2", "--timesteps-scale", "0.02",
                      "--dynamics-steps", "20", "--prior-samples", "20", "--bootstrap", "100", "--variants", "all"])
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f) == res
    assert res["environment"]["devices"]
    table = res["figures"]["tables"]["CartPole-v1"]
    assert list(table) == ["untrained", "trained"]
    rows = table["trained"]["rows"]
    assert list(rows) == [*bench.VARIANTS, bench.NOISE_FLOOR, "GIA (cosine)", "RGIA (cosine)", "prior mean"]
    for row in rows.values():
        assert row["ra"]["lo"] <= row["ra"]["mean"] <= row["ra"]["hi"] and 0.0 <= row["ra"]["mean"] <= 1.0
        assert set(bench.FIELDS) <= set(row)
    assert [(r["kind"], r["level"]) for r in res["figures"]["noise_sweep"][:3]] == [
        ("variance", 1e-2), ("ratio", 1.0), ("ratio", 10.0)]
    assert [r["variance"] for r in res["figures"]["utility"]] == [0.0, 1e-2]
    assert [r["batch_size"] for r in res["figures"]["batch_sweep"]] == [1, 2]
    assert res["victims"]["CartPole-v1"]["prior_samples"] == 20
    assert set(res["claims"]) == {"rgia_beats_gia", "noise_stops_rgia", "batch_above_3_mostly_fails"}
    for png in ("rgia_batch.png", "rgia_noise.png"):
        assert os.path.exists(os.path.join(out, png))


def test_benchmark_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown environment 'Breakout'"):
        bench.parse_args(["--envs", "Breakout"])
    with pytest.raises(ValueError, match="unknown regularizer name 'entropy'"):
        bench.parse_args(["--weights", "entropy=1"])
    with pytest.raises(ValueError, match="--targets"):
        bench.parse_args(["--targets", "1"])
    with pytest.raises(ValueError, match="--victim-seeds"):
        bench.parse_args(["--victim-seeds", "1"])
    with pytest.raises(ValueError, match="unknown variant"):
        bench.parse_args(["--variants", "GIA,DLG"])
    with pytest.raises(ValueError, match="stages must be increasing"):
        bench.parse_args(["--stages", "1,0.5"])
    with pytest.raises(ValueError, match="--batch-stage"):
        bench.parse_args(["--batch-stage", "0.5"])
    args = bench.parse_args(["--weights", "dynamics=0.5"])
    assert args.weights["dynamics"] == 0.5 and args.envs == list(bench.DEFAULT_ENVS)
    assert args.distance == "relative_l2" and args.targets >= 32 and args.victim_seeds >= 3
    assert args.prior_samples >= 500
    assert bench.parse_args(["--variants", "all"]).variants == list(bench.VARIANTS)
    assert bench.parse_args(["--variants", "GIA+R_r"]).variants == ["GIA", "GIA+R_r", "RGIA"]


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
