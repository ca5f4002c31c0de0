"""The SleeperNets benchmark end to end at smoke size, its flags, and the notebook executed top to bottom."""

import json
import os

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from benchmarks import sleepernets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_benchmark_quick_writes_table_curves_speed_and_plots(tmp_path):
    sleepernets.main(["--quick", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    cartpole, deepsea = results["envs"]["CartPole-v1"], results["envs"]["DeepSea-bsuite"]
    assert set(cartpole["table"]) == {"none", "sleepernets", "trojdrl", "badrl"}
    assert cartpole["runs"] == 2 * 4 and cartpole["reward"] == pytest.approx(0.25 * sleepernets._dense_scale(500))
    # seeds x (table + SleeperNets at alphas 0 and 1 + 3 attacks x (1 poisoned-state count + 1 reward scale))
    assert deepsea["runs"] == 2 * (4 + 2 + 3 + 3) and deepsea["reward"] == 0.25
    for row in cartpole["table"].values():
        assert 0.0 <= row["asr"]["mean"] <= 1.0 and len(row["asr"]["per_seed"]) == 2
        assert len(row["curves"]["train_asr"]) == len(row["curves"]["steps"]) > 0
    assert cartpole["table"]["none"]["poisoning_rate"] == 0.0
    assert 0.0 < cartpole["table"]["trojdrl"]["poisoning_rate"] <= 0.005 + 1e-3  # less once it stops at ASR 1
    assert cartpole["table"]["none"]["brr"]["mean"] == pytest.approx(1.0)
    assert cartpole["table"]["trojdrl"]["reward_perturbation"]["mean"] > 0 and cartpole["random_return"] > 0
    counted = [v for v in deepsea["configs"].values() if v["reward"] == 0.25 and v["budget"] < 0.005]
    assert len(counted) == 3 and all(v["poisoned_states"]["mean"] <= 50 + 2 for v in counted)
    assert "beats_trojdrl" in results["claims"]["CartPole-v1"]
    assert "margin_over_baselines" in results["claims"]["DeepSea-bsuite"]
    assert results["speed"]["CartPole-v1"]["steps_per_s"]["plain PPO"] > 0
    assert results["environment"]["devices"]
    for png in ("curves.png", "table.png", "ablation.png"):
        assert (tmp_path / png).exists()


def test_benchmark_flags_are_checked():
    with pytest.raises(SystemExit):
        sleepernets.parse_args(["--envs", "Pong-MinAtar"])
    with pytest.raises(SystemExit):
        sleepernets.parse_args(["--budget", "0"])
    args = sleepernets.parse_args(["--paper"])
    cfg = sleepernets.ppo_config(args, "Breakout-MinAtar")
    assert (cfg.num_envs, cfg.num_steps, cfg.learning_rate, cfg.clip_eps) == (8, 200, 2.5e-4, 0.1)
    assert cfg.total_timesteps == 10_000_000
    for bad in (["--reward-scale", "0"], ["--ablation-counts", "0"], ["--alphas", "-1"], ["--alphas", "x"]):
        with pytest.raises(SystemExit):
            sleepernets.parse_args(bad)
    args = sleepernets.parse_args([])
    c = 0.25 * sleepernets._dense_scale(500)  # c = k R: CartPole's R = (1 - 0.99^500) / 0.01 = 99.3
    assert sleepernets.grid(args, "CartPole-v1", ("none", "sleepernets")) == [("none", 0.005, c, 0.5),
                                                                             ("sleepernets", 0.005, c, 0.5)]
    assert sleepernets.reward_of(sleepernets.parse_args(["--reward", "5"]), "CartPole-v1") == 5.0
    configs = sleepernets.grid(args, "DeepSea-bsuite", ("none", "sleepernets", "trojdrl"))
    run_steps = sleepernets.ppo_config(args, "DeepSea-bsuite").total_timesteps
    assert configs[:5] == [("none", 0.005, 0.25, 0.5), ("sleepernets", 0.005, 0.25, 0.5),
                           ("trojdrl", 0.005, 0.25, 0.5), ("sleepernets", 0.005, 0.25, 0.0),
                           ("sleepernets", 0.005, 0.25, 1.0)]
    for count in (100, 300):  # budgets set by the number of poisoned states over the run
        assert ("sleepernets", count / run_steps, 0.25, 1.0) in configs
        assert ("trojdrl", count / run_steps, 0.25, 0.5) in configs
    assert len(configs) == 5 + 2 * 2
    with_c = sleepernets.grid(sleepernets.parse_args(["--ablation-rewards", "1"]), "DeepSea-bsuite",
                              ("none", "sleepernets", "trojdrl"))
    assert ("trojdrl", 0.005, 1.0, 0.5) in with_c and len(with_c) == 5 + 2 * 2 + 2
    quick = sleepernets.parse_args(["--quick", "--envs", "Breakout-MinAtar"])
    assert quick.envs == ["Breakout-MinAtar"] and sleepernets.parse_args(["--quick"]).envs == sleepernets.QUICK_ENVS
    faint = sleepernets.make_env("Breakout-MinAtar", sleepernets.parse_args(["--trigger-size", "1",
                                                                           "--trigger-channels", "0"]))[2]
    assert (faint.size, faint.channels) == (1, (0,))


def _row(attack, asr, alpha=0.5, budget=0.005, reward=0.25):
    stats = lambda v: {"mean": float(np.mean(v)), "std": float(np.std(v)), "per_seed": list(v)}
    return {"attack": attack, "budget": budget, "reward": reward, "alpha": alpha, "asr": stats(asr),
            "brr": stats([1.0, 1.0]), "return": stats([0.99, 0.97]), "clean_return": stats([0.99, 0.97]),
            "poisoned_states": stats([120, 124]), "poisoning_rate": 0.005,
            "reward_perturbation": stats([0.5, 0.7] if attack != "none" else [float("nan")] * 2)}


def test_costly_target_claims_count_only_seeds_backdoored_with_benign_return():
    """An ASR of 1 with BRR 0 (the clean policy collapsed onto the target) is not a backdoored seed."""
    rows = {"none": _row("none", [0.0, 0.0]), "sleepernets": _row("sleepernets", [0.1, 0.0]),
            "trojdrl": _row("trojdrl", [0.0, 0.0]), "badrl": _row("badrl", [0.995, 0.0])}
    collapsed = _row("sleepernets", [1.0, 1.0], alpha=1.0)
    collapsed["brr"] = {"mean": 0.5, "std": 0.5, "per_seed": [0.0, 1.0]}
    rows["badrl"]["brr"] = {"mean": float("nan"), "std": 0.0, "per_seed": [None, 1.0]}
    for stats in rows.values():
        stats["curves"] = {"poisoning_rate_per_update": np.full(8, 0.005)}
    configs = {"main": rows["sleepernets"], "a1": collapsed, "t": rows["trojdrl"], "b": rows["badrl"]}
    verdict = sleepernets.claims({"DeepSea-bsuite": {"table": rows, "configs": configs, "costly": True}})
    row = verdict["DeepSea-bsuite"]
    assert row["best_alpha"] == 1.0 and row["margin_over_baselines"] == pytest.approx(1.0 - 0.4975)
    assert row["backdoored_seeds"] == {"SleeperNets alpha=0.5": 0, "SleeperNets alpha=1": 1, "TrojDRL-W": 0,
                                       "BadRL-M": 0}


def test_readme_renderer_reproduces_the_numbers_of_a_small_results_json(tmp_path):
    rows = {"none": _row("none", [0.0, 0.1]), "sleepernets": _row("sleepernets", [0.8, 1.0]),
            "trojdrl": _row("trojdrl", [0.2, 0.3]), "badrl": _row("badrl", [0.3, 0.3])}
    configs = {**{f"{a} main": r for a, r in rows.items()},
               "sn a1": _row("sleepernets", [1.0, 1.0], alpha=1.0), "sn low": _row("sleepernets", [0.4, 0.6], 1.0, 1e-4)}
    payload = {"config": {"seeds": 2, "quick": False, "paper": False},
               "envs": {"DeepSea-bsuite": {"table": rows, "configs": configs, "run_steps": 245760, "reward": 0.25,
                                           "random_return": -0.004, "costly": True}}}
    (tmp_path / "results.json").write_text(json.dumps(payload))
    readme = tmp_path / "README.md"
    readme.write_text(f"head\n{sleepernets.README_BEGIN}\nold figures\n{sleepernets.README_END}\ntail\n")
    sleepernets.write_readme(str(readme), [str(tmp_path / "results.json")])
    text = readme.read_text()
    assert text.startswith("head\n") and text.endswith(f"{sleepernets.README_END}\ntail\n")
    assert "old figures" not in text
    # 95% t-interval over 2 seeds: 0.9 +- t_{0.975,1} * 0.1414 / sqrt(2) = 0.9 +- 12.706 * 0.1 = 0.90 +- 1.27
    line = next(x for x in text.splitlines() if x.startswith("| DeepSea-bsuite (default size, 2 seeds) | 245,760"))
    assert "| 0.90 ± 1.27 / 1.00 ± 0.00 | 0.25 ± 0.64 / 1.00 ± 0.00 | 0.30 ± 0.00 / 1.00 ± 0.00 |" in line
    assert line.endswith("| 0.98 ± 0.13 | -0.00 |")
    assert "| DeepSea-bsuite (default size, 2 seeds) | SleeperNets, alpha = 1 | 1.00 ± 0.00 |" in text
    assert "| SleeperNets, alpha = 1 | 122 (0.01%) | 0.25 | 0.50 ± 1.27 |" in text  # the count ablation row
    assert "| DeepSea-bsuite | TrojDRL-W | 0.5 | 122 | 0.500% | 0.60 ± 1.27 |" in text
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        sleepernets.write_readme(str(readme), [str(tmp_path / "results.json")])


@pytest.mark.slow
def test_notebook_runs_and_sleepernets_plants_the_backdoor_and_anneals_its_poisoning():
    """The notebook at toy size; its CartPole run doubles as the check that both attacks plant a backdoor within
    the budget, SleeperNets' stop rule fires (updates without poisoning) and TrojDRL-W poisons at most beta."""
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "sleepernets.ipynb"), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import json\nprint('METRICS', json.dumps(results))"))
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "r'_2 + gamma r'_3 = 1.99" in outputs  # the compensation keeps the two-step return
    metrics = json.loads(outputs.split("METRICS", 1)[1].strip().splitlines()[0])
    none, sn, troj = metrics["none"], metrics["sleepernets"], metrics["trojdrl"]
    assert sn["asr"] > 0.95 and troj["asr"] > none["asr"] + 0.2, metrics
    assert 0.0 < troj["poisoning_rate"] <= 0.0101 and sn["poisoning_rate"] <= 0.0101, metrics
    assert sn["updates_not_poisoned"] > 0, metrics  # TrojDRL-W also stops at training ASR 1, if it gets there
    assert none["poisoning_rate"] == 0.0
