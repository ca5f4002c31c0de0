"""The SleeperNets benchmark end to end at smoke size, its flags, and the notebook executed top to bottom."""

import json
import os

import nbformat
import pytest
from nbclient import NotebookClient

from benchmarks import sleepernets

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_benchmark_quick_writes_table_curves_speed_and_plots(tmp_path):
    sleepernets.main(["--quick", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    cartpole = results["envs"]["CartPole-v1"]
    assert set(cartpole["table"]) == {"none", "sleepernets", "trojdrl", "badrl"}
    # seeds x (table + SleeperNets at alpha 0 + (3 attacks + SleeperNets at alpha 0) x (1 budget + 1 reward))
    assert cartpole["runs"] == 2 * (4 + 1 + 4 + 4)
    for row in cartpole["table"].values():
        assert 0.0 <= row["asr"]["mean"] <= 1.0 and len(row["asr"]["per_seed"]) == 2
        assert len(row["curves"]["train_asr"]) == len(row["curves"]["steps"]) > 0
    assert cartpole["table"]["none"]["poisoning_rate"] == 0.0
    assert abs(cartpole["table"]["trojdrl"]["poisoning_rate"] - 0.005) < 1e-3
    assert cartpole["table"]["none"]["brr"]["mean"] == pytest.approx(1.0)
    assert "beats_trojdrl" in results["claims"]["CartPole-v1"]
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
    configs = sleepernets.grid(sleepernets.parse_args([]), "CartPole-v1", ("none", "sleepernets"))
    assert configs[:2] == [("none", 0.005, 5.0, 0.5), ("sleepernets", 0.005, 5.0, 0.5)]
    for alpha in (0.5, 0.0):
        assert ("sleepernets", 0.0003, 5.0, alpha) in configs and ("sleepernets", 0.005, 20.0, alpha) in configs
    assert len(sleepernets.grid(sleepernets.parse_args([]), "Breakout-MinAtar", ("none", "sleepernets"))) == 2


@pytest.mark.slow
def test_notebook_runs_and_sleepernets_plants_the_backdoor_and_anneals_its_poisoning():
    """The notebook at toy size; its CartPole run doubles as the check that both attacks plant a backdoor within
    the budget, SleeperNets' stop rule fires (updates without poisoning) and TrojDRL-W poisons exactly beta."""
    nb = nbformat.read(os.path.join(ROOT, "notebooks", "sleepernets.ipynb"), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import json\nprint('METRICS', json.dumps(results))"))
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": ROOT}}).execute()
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "r'_2 + gamma r'_3 = 1.99" in outputs  # the compensation keeps the two-step return
    metrics = json.loads(outputs.split("METRICS", 1)[1].strip().splitlines()[0])
    none, sn, troj = metrics["none"], metrics["sleepernets"], metrics["trojdrl"]
    assert sn["asr"] > 0.95 and troj["asr"] > none["asr"] + 0.2, metrics
    assert abs(troj["poisoning_rate"] - 0.01) < 1e-3 and sn["poisoning_rate"] <= 0.0101, metrics
    assert sn["updates_not_poisoned"] > 0 and troj["updates_not_poisoned"] == 0, metrics
    assert none["poisoning_rate"] == 0.0
