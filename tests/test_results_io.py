"""``results.save`` / ``results.load``: FL History and RL/FRL metric dicts round-trip through JSON lines and CSV,
with the config and package versions beside them."""

import csv
import json

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
