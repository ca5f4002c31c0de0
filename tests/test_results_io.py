"""``results.save`` / ``results.load``: FL History and RL/FRL metric dicts round-trip through JSON lines and CSV,
with the config and package versions beside them."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fedjax_attacks import data, fl, models, results


@pytest.fixture(scope="module")
def history():
    ds = data.load("digits")
    model = models.get("mlp", ds.num_classes, ds.input_shape, hidden=(8,))
    config = fl.FLConfig(num_clients=20, num_malicious=4, clients_per_round=4, batch_size=4, rounds=6, eval_every=2)
    _, hist = jax.jit(jax.vmap(fl.make_run(config, ds, model)))(jax.random.split(jax.random.PRNGKey(0), 2))
    return config, hist


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_fl_history_round_trips_with_config_and_versions(tmp_path, history, kind):
    config, hist = history
    paths = results.save(str(tmp_path), hist, config=config, name="history")
    fields, meta = results.load(paths[kind])
    assert set(fields) == set(hist._fields)
    for name in hist._fields:
        expected = np.asarray(getattr(hist, name))
        assert fields[name].dtype == expected.dtype and fields[name].shape == expected.shape == (2, 3)
        np.testing.assert_array_equal(fields[name], expected)
    assert meta["axes"] == ["seed", "step"]
    assert meta["config"]["num_clients"] == 20 and meta["config"]["aggregator"] == "mean"
    assert meta["environment"]["versions"]["jax"] == jax.__version__
    assert meta["environment"]["devices"]


def test_rl_metrics_with_nan_and_extra_axes_round_trip(tmp_path):
    """One row per update; a field with more axes keeps them in its cells; NaN, bools and ints come back."""
    rng = np.random.default_rng(0)
    returns = rng.normal(size=5).astype(np.float32)
    returns[1] = np.nan
    metrics = {"episode_return": returns, "episodes": np.arange(5, dtype=np.int32),
               "done": np.array([True, False, True, True, False]), "per_agent": rng.normal(size=(5, 3))}
    paths = results.save(str(tmp_path), metrics, config={"algo": "ppo", "lr": 2.5e-4}, name="ppo")
    for kind in ("jsonl", "csv"):
        fields, meta = results.load(paths[kind])
        for name, expected in metrics.items():
            assert fields[name].dtype == expected.dtype, name
            np.testing.assert_array_equal(fields[name], expected)
        assert meta["config"] == {"algo": "ppo", "lr": 2.5e-4}
    rows = [json.loads(line) for line in open(paths["jsonl"])]
    assert len(rows) == 5 and rows[2]["step"] == 2 and len(rows[2]["per_agent"]) == 3
    with open(paths["csv"], newline="") as f:
        header = next(csv.reader(f))
    assert header == ["step", "episode_return", "episodes", "done", "per_agent"]


def test_save_refuses_what_it_cannot_lay_out_as_rows(tmp_path):
    with pytest.raises(ValueError, match="share leading axes"):
        results.save(str(tmp_path), {"a": np.zeros(3), "b": np.zeros(4)})
    with pytest.raises(ValueError, match="also field names"):
        results.save(str(tmp_path), {"step": np.zeros(3)})
    with pytest.raises(ValueError, match="NamedTuple, dataclass or mapping"):
        results.save(str(tmp_path), np.zeros(3))


# ------------------------------------------------------------ nothing silent: a save is whole or not there at all
def _content(i, rows=6):
    """Save number ``i``: every field and the config tell which save wrote them."""
    return {"x": np.full(rows, i, np.float32), "per": np.full((rows, 2), i, np.int32)}, {"i": i}


def _assert_is_one_whole_save(path, allowed):
    fields, meta = results.load(path)
    i = meta["config"]["i"]
    assert i in allowed, (path, i)
    expected, _ = _content(i, len(fields["x"]))
    for name, value in expected.items():
        np.testing.assert_array_equal(fields[name], value, err_msg=f"{path}: a mix of saves")


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_load_refuses_a_truncated_file_naming_it(tmp_path, kind):
    """A kill mid-write used to leave fewer rows than the meta says, read back as garbage; now a ValueError."""
    metrics, config = _content(1, rows=10)
    paths = results.save(str(tmp_path), metrics, config=config, name="run")
    with open(paths[kind]) as f:
        lines = f.readlines()
    with open(paths[kind], "w") as f:
        f.writelines(lines[:6])  # whole rows only: the file still parses
    with pytest.raises(ValueError, match=r"run\." + kind):
        results.load(paths[kind])


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_load_refuses_a_data_file_of_another_save(tmp_path, kind):
    """A new csv beside an old meta (same shapes, other rows) would be read with the old config; now a ValueError."""
    old = results.save(str(tmp_path / "old"), *_content(1)[:1], config=_content(1)[1], name="run")
    new = results.save(str(tmp_path / "new"), *_content(2)[:1], config=_content(2)[1], name="run")
    os.replace(new[kind], old[kind])
    with pytest.raises(ValueError, match=r"run\." + kind):
        results.load(old[kind])


@pytest.mark.parametrize("crash_at", [0, 1, 2])
def test_a_save_killed_at_any_rename_leaves_the_old_or_the_new_save(tmp_path, monkeypatch, crash_at):
    """Every file is written aside and renamed into place, the meta first: a crash before the meta's rename
    keeps the old save, after it ``load`` finds the new one (its data files wait beside as ``.new``)."""
    results.save(str(tmp_path), *_content(0)[:1], config=_content(0)[1], name="run")
    replace, calls = os.replace, []

    def crashing_replace(src, dst):
        if len(calls) == crash_at:
            raise KeyboardInterrupt  # what a kill leaves: nothing after this point runs
        calls.append(dst)
        replace(src, dst)

    monkeypatch.setattr(os, "replace", crashing_replace)
    with pytest.raises(KeyboardInterrupt):
        results.save(str(tmp_path), *_content(1)[:1], config=_content(1)[1], name="run")
    monkeypatch.setattr(os, "replace", replace)
    committed = crash_at > 0
    for kind in ("jsonl", "csv"):
        _assert_is_one_whole_save(str(tmp_path / f"run.{kind}"), allowed={1} if committed else {0})
    results.save(str(tmp_path), *_content(2)[:1], config=_content(2)[1], name="run")
    for kind in ("jsonl", "csv"):
        _assert_is_one_whole_save(str(tmp_path / f"run.{kind}"), allowed={2})
    assert sorted(os.listdir(tmp_path)) == ["run.csv", "run.jsonl", "run.meta.json"]


SAVE_FOREVER = """
import sys
import numpy as np
from fedjax_attacks import results
i = 0
while True:  # save number i, as _content(i, rows=20000)
    metrics = {"x": np.full(20000, i, np.float32), "per": np.full((20000, 2), i, np.int32)}
    results.save(sys.argv[1], metrics, config={"i": i}, name="run")
    print(i, flush=True)
    i += 1
"""


def test_results_killed_mid_save_keep_a_whole_save(tmp_path):
    """A subprocess saves 20,000-row files again and again and is SIGKILLed three quarters into a save (mostly
    writing files): ``load`` gets back that save or the one before, whole, never a mix or a truncated one."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(tmp_path)], cwd=root,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()
        start = time.monotonic()
        done = int(proc.stdout.readline())
        time.sleep(0.75 * (time.monotonic() - start))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    for kind in ("jsonl", "csv"):
        _assert_is_one_whole_save(str(tmp_path / f"run.{kind}"), allowed={done, done + 1})
