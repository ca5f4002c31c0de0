"""Attacks inside the FL simulation: label flipping, the attack switch, and the attack x defense benchmark."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import attack_matrix
from fedjax_attacks import aggregators, attacks, data, fl, models
from fedjax_attacks.attacks import AttackInput

DIGITS = data.load("digits")
MLP = models.get("mlp", 10, DIGITS.input_shape, hidden=(8,))
ALL_CLIENTS = fl.FLConfig(num_clients=10, num_malicious=5, clients_per_round=10, batch_size=4, lr=0.1, rounds=2,
                          eval_every=1)
MEMBERS = (("none", {}), ("ipm", {"eps": 3.0}), ("label_flip", {}), ("alie", {}))


def test_label_flip_changes_labels_of_malicious_clients_only():
    """All clients sampled each round: label flipping == an honest run on data whose malicious shards are flipped."""
    key = jax.random.PRNGKey(0)
    flipped_cfg = dataclasses.replace(ALL_CLIENTS, attack="switch", attack_hparams={"members": MEMBERS, "index": 2})
    sim = fl.make_simulation(flipped_cfg, DIGITS, MLP)
    malicious_samples = np.concatenate([sim.partition.client_samples(k) for k in range(ALL_CLIENTS.num_malicious)])
    y = DIGITS.y_train.copy()
    y[malicious_samples] = 9 - y[malicious_samples]
    relabeled = dataclasses.replace(DIGITS, y_train=y)
    expected, _ = jax.jit(fl.make_run(ALL_CLIENTS, relabeled, MLP))(key)
    got, _ = jax.jit(sim.run)(key)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_switch_dispatches_on_a_traced_index():
    rng = np.random.default_rng(0)
    mask = jnp.asarray(np.arange(6) < 2)
    inp = AttackInput(jnp.asarray(rng.normal(size=(6, 5)), jnp.float32), mask, jnp.int32(0),
                      global_params=jnp.zeros(3), aggregator=aggregators.median(), full_knowledge=True)
    key = jax.random.PRNGKey(0)
    craft = jax.jit(lambda i: attacks.get("switch", members=MEMBERS, index=i).craft(key, inp))
    for i, (name, hparams) in enumerate(MEMBERS):
        np.testing.assert_allclose(craft(jnp.int32(i)), attacks.get(name, **hparams).craft(key, inp), rtol=1e-6)
    assert attacks.get("switch", members=MEMBERS).needs_full_knowledge


@pytest.mark.slow  # the benchmark end to end at --quick size
def test_attack_matrix_quick_writes_results(tmp_path):
    out = tmp_path / "matrix"
    attack_matrix.main(["--quick", "--out", str(out)])
    results = json.loads((out / "results.json").read_text())
    acc = np.array(results["final_accuracy_mean"], dtype=float)
    assert acc.shape == (len(results["attacks"]), len(results["defenses"]))
    assert np.all((acc >= 0) & (acc <= 1))
    assert results["wall_time_s"]["total"] > 0
    assert results["environment"]["devices"]
    assert (out / "attack_matrix.png").exists()
