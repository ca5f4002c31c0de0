"""The ``fedjax-attacks`` command line: configs (YAML, JSON, overrides, bad fields), the run folder, the FL
experiments end to end at toy size, the leaderboard, the loggers and the benchmark dispatch."""

import glob
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import yaml

from fedjax_attacks import attacks, data, fl, models, results
from fedjax_attacks.cli import config as configs
from fedjax_attacks.cli import leaderboard, loggers, main, run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_FL = {"num_clients": 10, "num_malicious": 3, "clients_per_round": 5, "batch_size": 4, "rounds": 4,
          "eval_every": 2}
TOY_SWEEP = {
    "experiment": "fl_sweep", "dataset": "digits", "model": "mlp", "seeds": 2, "fl": TOY_FL,
    "attacks": {"none": {"name": "none"}, "flip": {"name": "sign_flip", "hparams": {"scale": 4.0}}},
    "defenses": {"mean": {"name": "mean"}, "median": {"name": "median"}},
}


def _write(tmp_path, payload, name="toy.yaml"):
    path = tmp_path / name
    path.write_text(json.dumps(payload) if name.endswith(".json") else yaml.safe_dump(payload, sort_keys=False))
    return str(path)


def _direct_sweep(defense, fl_fields, seeds, members):
    """Final accuracy [A, S] of the same sweep computed without the CLI."""
    ds = data.load("digits")
    model = models.get("mlp", ds.num_classes, ds.input_shape)
    config = fl.FLConfig(**fl_fields, aggregator=defense)
    sweep = fl.make_attack_sweep(config, ds, model, members)
    keys = jax.random.split(jax.random.PRNGKey(0), seeds)
    return np.stack([np.asarray(sweep(keys, i).test_accuracy) for i in range(len(members))])


def test_fl_sweep_end_to_end_writes_the_run_folder_and_applies_overrides(tmp_path):
    out = tmp_path / "run"
    rc = main(["run", _write(tmp_path, TOY_SWEEP), "fl.rounds=6", f"out={out}", "defenses.median.name=krum",
               "defenses.median.hparams.num_byzantine=1"])
    assert rc == 0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["fl"]["rounds"] == 6 and resolved["defenses"]["median"]["name"] == "krum"
    assert resolved["fl"]["lr"] == fl.FLConfig().lr  # a schema default filled in
    env = json.loads((out / "environment.json").read_text())
    assert env["devices"] and env["versions"]["jax"] == jax.__version__
    fields, meta = results.load(str(out / "metrics.csv"))
    assert meta["axes"] == ["attack", "defense", "seed", "eval"]
    accuracy = fields["test_accuracy"]
    assert accuracy.shape == (2, 2, 2, 3)  # 6 rounds / eval_every 2: the override reached the run
    jsonl = results.load(str(out / "metrics.jsonl"))[0]["test_accuracy"]
    np.testing.assert_array_equal(jsonl, accuracy)
    members = [("none", {}), ("sign_flip", {"scale": 4.0})]
    toy = {**TOY_FL, "rounds": 6}
    np.testing.assert_allclose(accuracy[:, 0], _direct_sweep("mean", toy, 2, members), atol=1e-6)
    krum = fl.FLConfig(**toy, aggregator="krum", aggregator_hparams={"num_byzantine": 1})
    ds = data.load("digits")
    sweep = fl.make_attack_sweep(krum, ds, models.get("mlp", ds.num_classes, ds.input_shape), members)
    direct = np.asarray(sweep(jax.random.split(jax.random.PRNGKey(0), 2), 1).test_accuracy)
    np.testing.assert_allclose(accuracy[1, 1], direct, atol=1e-6)  # the overridden hparams were used
    summary = json.loads((out / "summary.json").read_text())
    np.testing.assert_allclose(summary["final_accuracy_mean"], accuracy[..., -1].mean(-1), atol=1e-6)
    assert sorted(os.listdir(out / "plots")) == ["curves_mean.png", "curves_median.png", "final_accuracy.png"]


def test_vmapped_and_looped_attacks_agree(tmp_path):
    base = _write(tmp_path, {**TOY_SWEEP, "defenses": {"median": {"name": "median"}}})
    finals = [run(base, [f"out={tmp_path / str(v)}", f"vmap_attacks={v}"])["summary"]["final_accuracy_mean"]
              for v in ("true", "false")]
    np.testing.assert_allclose(finals[0], finals[1], atol=1e-6)


@pytest.mark.parametrize("override, field", [
    (["fl.roundz=3"], "fl.roundz"),
    (["sedes=2"], "sedes"),
    (["seeds=three"], "seeds"),
    (["logging.tensorbord=true"], "logging.tensorbord"),
    (["attacks.flip.hparam.scale=1"], "attacks.flip.hparam"),
])
def test_unknown_or_badly_typed_override_names_field_and_file(tmp_path, override, field):
    path = _write(tmp_path, TOY_SWEEP)
    with pytest.raises(ValueError, match=rf"{path}.*{field}"):
        configs.load(path, override)


def test_unknown_field_in_the_file_names_field_and_file_before_running(tmp_path):
    path = _write(tmp_path, {**TOY_SWEEP, "fl": {**TOY_FL, "learning_rate": 0.1}}, "bad.json")
    with pytest.raises(ValueError, match=r"bad\.json.*fl\.learning_rate"):
        run(path, [f"out={tmp_path / 'never'}"])
    assert not (tmp_path / "never").exists()


def test_bad_names_and_values_are_value_errors_naming_field_and_file(tmp_path):
    cases = [({**TOY_SWEEP, "attacks": {"x": {"name": "no_such_attack"}}}, "attacks.x"),
             ({**TOY_SWEEP, "defenses": {"k": {"name": "krum", "hparams": {"bogus": 1}}}}, "defenses.k"),
             ({**TOY_SWEEP, "fl": {**TOY_FL, "eval_every": 3}}, "eval_every"),
             ({**TOY_SWEEP, "experiment": "nope"}, "experiment"),
             ({key: v for key, v in TOY_SWEEP.items() if key != "experiment"}, "experiment")]
    for i, (payload, field) in enumerate(cases):
        path = _write(tmp_path, payload, f"case{i}.yaml")
        with pytest.raises(ValueError, match=rf"case{i}\.yaml.*{field}"):
            run(path, [f"out={tmp_path / 'never'}"])


def test_main_reports_a_bad_config_with_status_2(tmp_path, capsys):
    path = _write(tmp_path, TOY_SWEEP)
    assert main(["run", path, "fl.nope=1"]) == 2
    assert "fl.nope" in capsys.readouterr().err


def test_every_shipped_config_loads_and_checks(tmp_path):
    paths = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
    kinds = {configs.load(p).experiment for p in paths}
    assert kinds == set(configs.EXPERIMENTS), kinds
    for p in paths:
        config = configs.load(p)
        if config.experiment in configs.BENCHMARKS:
            configs.benchmark_argv(config, p)


def test_benchmark_args_become_its_command_line_and_its_parser_checks_them(tmp_path):
    path = _write(tmp_path, {"experiment": "decbyzpg", "quick": True,
                             "args": {"seeds": 3, "paper_dec_baseline": True, "envs": "CartPole-v1",
                                      "learning_rate": None}})
    argv = configs.benchmark_argv(configs.load(path), path)
    assert argv == ["--quick", "--envs", "CartPole-v1", "--seeds", "3", "--paper-dec-baseline"]
    with pytest.raises(ValueError, match=r"toy\.yaml.*args\.sedes"):
        configs.load(path, ["args.sedes=3"])
    with pytest.raises(ValueError, match=r"toy\.yaml.*args\.seeds"):
        configs.load(path, ["args.seeds=many"])
    with pytest.raises(ValueError, match=r"toy\.yaml: args: .*steps"):
        configs.benchmark_argv(configs.load(path, ["args.steps=nope"]), path)


def test_fl_run_checkpoints_exports_params_and_logs_to_tensorboard(tmp_path):
    payload = {"experiment": "fl", "seeds": 2, "fl": TOY_FL, "attack": {"name": "sign_flip"},
               "defense": {"name": "median"}, "chunk_blocks": 1, "logging": {"tensorboard": True}}
    out = tmp_path / "run"
    summary = run(_write(tmp_path, payload, "one.json"), [f"out={out}"])["summary"]
    assert os.listdir(out / "checkpoints") and (out / "final_params.npz").exists()
    assert glob.glob(str(out / "tensorboard" / "events.out.tfevents.*"))
    fields, _ = results.load(str(out / "metrics.jsonl"))
    assert fields["test_accuracy"].shape == (2, 2)
    again = run(_write(tmp_path, payload, "one.json"), [f"out={out}"])["summary"]  # resumes from the checkpoint
    assert again["final_accuracy_mean"] == summary["final_accuracy_mean"]


def test_missing_logging_extra_says_which_to_install(monkeypatch):
    real_import = loggers.importlib.import_module

    def no_wandb(name):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name)

    monkeypatch.setattr(loggers.importlib, "import_module", no_wandb)
    section = configs.Logging(wandb=True)
    with pytest.raises(ImportError, match=r"fedjax-attacks\[wandb\]"):
        loggers.make_logger(section, "/tmp")
    assert loggers.make_logger(configs.Logging(), "/tmp")._sinks == []  # off by default


def test_default_leaderboard_attacks_cover_the_registry():
    table = leaderboard.default_attacks()
    covered = {entry["name"] for entry in table.values()}
    assert covered == set(attacks.names()) - {"switch"}
    assert {"lmp_median", "lmp_krum", "minmax", "minsum"} <= set(table)


def test_leaderboard_toy_takes_the_worst_attack_per_defense(tmp_path):
    out = tmp_path / "board"
    rc = main(["leaderboard", "datasets=[digits]", "seeds=2", f"out={out}", "frl.enabled=false",
               *[f"fl.{k}={v}" for k, v in TOY_FL.items()],
               "attacks={none: {name: none}, flip: {name: sign_flip}, noise: {name: gaussian, hparams: {sigma: 50}}}",
               "defenses={mean: {name: mean}, median: {name: median}}", "rl_attack.enabled=false"])
    assert rc == 0
    board = json.loads((out / "leaderboard.json").read_text())
    digits = board["fl"]["results"]["digits"]
    for defense in ("mean", "median"):
        column = {a: digits["matrix"][a][defense] for a in ("flip", "noise")}
        assert digits["worst_case"][defense] == min(column.values())
        assert digits["worst_attack"][defense] == min(column, key=column.get)
        assert digits["no_attack"][defense] == digits["matrix"]["none"][defense]
    text = (out / "leaderboard.md").read_text()
    assert "| mean |" in text and "RL attack: not included" in text
    assert (out / "plots" / "leaderboard_fl.png").exists() and (out / "plots" / "matrix_digits.png").exists()


@pytest.mark.slow  # trains the RL attack's inversion, denoiser and TD3 (~1.5 min on 2 cores)
def test_leaderboard_with_the_rl_attack_adds_its_row_and_skips_what_it_cannot_mirror(tmp_path):
    out = tmp_path / "board"
    fields = {**TOY_FL, "num_clients": 10, "num_malicious": 3, "clients_per_round": 5, "rounds": 8, "eval_every": 4}
    rc = main(["leaderboard", "datasets=[digits]", "seeds=2", f"out={out}", "frl.enabled=false",
               *[f"fl.{k}={v}" for k, v in fields.items()],
               "attacks={none: {name: none}, flip: {name: sign_flip}}",
               "defenses={median: {name: median}, cc: {name: centered_clipping}}",
               "rl_attack.enabled=true", "rl_attack.tau_e=4", "rl_attack.policy_iterations=2",
               "rl_attack.num_envs=2", "rl_attack.horizon=2"])
    assert rc == 0
    board = json.loads((out / "leaderboard.json").read_text())
    digits = board["fl"]["results"]["digits"]
    rl = digits["matrix"]["rl_attack"]
    assert 0.0 <= rl["median"] <= 1.0  # the RL attack ran against the stateless median
    assert "cc" in digits["rl_attack_not_run"] and "state" in digits["rl_attack_not_run"]["cc"]
    column = {a: digits["matrix"][a]["median"] for a in ("flip", "rl_attack")}
    assert digits["worst_case"]["median"] == min(column.values())
    assert digits["worst_attack"]["cc"] == "flip"  # no RL entry for the rule it cannot mirror
    text = (out / "leaderboard.md").read_text()
    assert "RL attack on digits" in text and "cc not mirrorable" in text


def test_leaderboard_refuses_rl_attack_datasets_it_does_not_run(tmp_path):
    with pytest.raises(ValueError, match=r"rl_attack\.datasets.*mnist5k.*not in 'datasets'"):
        run(None, ["datasets=[digits]", f"out={tmp_path / 'board'}", "frl.enabled=false",
                   "rl_attack.datasets=[digits,mnist5k]"], experiment="leaderboard")


def test_leaderboard_command_refuses_another_experiment(tmp_path):
    with pytest.raises(ValueError, match="leaderboard"):
        run(_write(tmp_path, TOY_SWEEP), [], experiment="leaderboard")


def test_module_entry_point_runs(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fedjax_attacks.cli", "run", _write(tmp_path, TOY_SWEEP),
                           "fl.nope=1"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "fl.nope" in done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", ["decbyzpg_cartpole", "rl_attack_fig3", "rgia_table", "sleepernets"])
def test_paper_configs_run_at_the_benchmarks_quick_size(tmp_path, name):
    out = tmp_path / name
    summary = run(os.path.join(ROOT, "configs", f"{name}.yaml"), ["quick=true", f"out={out}"])["summary"]
    assert "--quick" in summary["argv"]
    assert (out / "results.json").exists() and glob.glob(str(out / "*.png"))
    fields, _ = results.load(str(out / "metrics.csv"))
    assert fields and all(v.shape == (1,) for v in fields.values())
    assert any("wall" in path for path in fields), list(fields)[:10]


@pytest.mark.slow
def test_quickstart_config_reproduces_the_quickstart_benchmark(tmp_path):
    from benchmarks import quickstart

    expected = quickstart.main(["--quick", "--out", str(tmp_path / "bench")])
    summary = run(os.path.join(ROOT, "configs", "quickstart.yaml"),
                  ["fl.rounds=100", "fl.eval_every=10", "seeds=2", f"out={tmp_path / 'cli'}"])["summary"]
    for i, attack in enumerate(summary["attacks"]):
        for j, defense in enumerate(summary["defenses"]):
            cell = expected["cells"][f"{attack}|{defense}"]
            assert abs(summary["final_accuracy_mean"][i][j] - cell["final_accuracy_mean"]) < 1e-6


@pytest.mark.slow
def test_frl_leaderboard_toy(tmp_path):
    out = tmp_path / "board"
    run(None, ["datasets=[digits]", f"out={out}", *[f"fl.{k}={v}" for k, v in TOY_FL.items()],
               "attacks={none: {name: none}, flip: {name: sign_flip}}", "defenses={mean: {name: mean}}",
               "frl.aggregators=[median]", "frl.behaviours=[large_noise,avg_zero]", "frl.max_trajectories=24",
               "frl.horizon=20", "frl.large_batch=8", "frl.agents=4", "rl_attack.enabled=false"],
        experiment="leaderboard")
    board = json.loads((out / "leaderboard.json").read_text())
    for algorithm in ("dec", "byz"):
        rows = board["frl"]["results"][algorithm]
        assert set(rows) == {"median", "mean"}
        for row in rows.values():
            assert row["worst_case"] == min(row["per_behaviour"].values())
    assert (out / "plots" / "leaderboard_frl.png").exists()


def _setup_cell(name):
    import nbformat

    nb = nbformat.read(os.path.join(ROOT, "notebooks", name), as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    assert 'REPO_URL = "<git URL or wheel path>"' in cell.source
    return cell.source.split("\nimport jax", 1)[0]


def _exec_setup(source, cwd, monkeypatch, repo_url=None):
    """Runs a notebook's install cell in ``cwd`` as if fedjax_attacks were not installed; returns pip's argv."""
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fedjax_attacks" else real_find_spec(name, *a))
    calls = []
    monkeypatch.setattr(subprocess, "check_call", calls.append)
    monkeypatch.chdir(cwd)
    if repo_url is not None:
        source = source.replace('REPO_URL = "<git URL or wheel path>"', f"REPO_URL = {repo_url!r}")
    exec(compile(source, "setup-cell", "exec"), {})
    return calls


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(os.path.join(ROOT, "notebooks")) if n.endswith(".ipynb")))
def test_notebook_setup_cell_refuses_the_placeholder_outside_a_checkout(tmp_path, monkeypatch, name):
    source = _setup_cell(name)
    with pytest.raises(RuntimeError, match="set REPO_URL"):
        _exec_setup(source, tmp_path, monkeypatch)
    with pytest.raises(RuntimeError, match="set REPO_URL"):
        _exec_setup(source, tmp_path, monkeypatch, repo_url="")
    wheel = str(tmp_path / "fedjax_attacks-0.1.0-py3-none-any.whl")
    assert _exec_setup(source, tmp_path, monkeypatch, repo_url=wheel)[-1][-1] == wheel
    url = "https://example.org/me/fedjax_attacks.git"
    assert _exec_setup(source, tmp_path, monkeypatch, repo_url=url)[-1][-1] == f"git+{url}"
    assert _exec_setup(source, os.path.join(ROOT, "notebooks"), monkeypatch)[-1][-1] == ROOT  # the checkout
