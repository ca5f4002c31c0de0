"""Nothing lost, nothing silent: the server refuses non-finite rounds, the non_finite attack."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks import attacks, data, fl, models
from fedjax_attacks.attacks import AttackInput

DIGITS = data.load("digits")
MLP = models.get("mlp", 10, DIGITS.input_shape, hidden=(16,))
BASE = fl.FLConfig(num_clients=20, num_malicious=6, clients_per_round=5, batch_size=4, lr=0.1, rounds=12,
                   eval_every=4, attack="non_finite")


def test_non_finite_attack_sends_nan_inf_and_overflowing_rows():
    mask = jnp.array([False, True, True, False, True, True, True])
    inp = AttackInput(jnp.ones((7, 3)), mask, jnp.int32(0), full_knowledge=True)
    rows = np.asarray(attacks.get("non_finite").craft(jax.random.PRNGKey(0), inp))[np.asarray(mask)]
    assert np.isnan(rows[0]).all() and (rows[1] == np.inf).all() and (rows[2] == -np.inf).all()
    assert (rows[3] == np.float32(1e38)).all() and np.isnan(rows[4]).all()  # cycles
    assert np.isinf(np.sum(rows[3].astype(np.float64) ** 2).astype(np.float32))  # its squared norm overflows
    with pytest.raises(ValueError, match="kind"):
        attacks.get("non_finite", kind="zero")


def test_server_skips_non_finite_rounds_and_counts_them():
    """Under the mean every round that samples an attacker is non-finite: "skip" keeps theta and counts exactly
    those rounds, "apply" lets the model become NaN for good."""
    key = jax.random.PRNGKey(1)
    params, history = jax.jit(fl.make_run(BASE, DIGITS, MLP))(key)
    assert np.all(np.isfinite(np.asarray(params)))
    sim = fl.make_simulation(BASE, DIGITS, MLP)

    @jax.jit
    def attacked_rounds(key):
        state, default = sim.init(key), sim.default_params()
        hits = []
        for _ in range(BASE.rounds):
            rin = sim.client_updates(state, default)
            hits.append(jnp.any(rin.malicious_mask))
            state, _ = sim.round_step(state, default)
        return jnp.stack(hits)

    hits = np.asarray(attacked_rounds(key)).reshape(-1, BASE.eval_every).sum(1)
    assert hits.sum() > 0 and hits.sum() < BASE.rounds
    np.testing.assert_array_equal(np.asarray(history.num_skipped), hits)
    applied, _ = jax.jit(fl.make_run(dataclasses.replace(BASE, on_nonfinite="apply"), DIGITS, MLP))(key)
    assert np.all(np.isnan(np.asarray(applied)))


def test_raise_names_the_round():
    run = jax.jit(fl.make_run(dataclasses.replace(BASE, on_nonfinite="raise"), DIGITS, MLP))
    with pytest.raises(Exception, match=r"FL round \d+: the aggregate is non-finite"):
        jax.block_until_ready(run(jax.random.PRNGKey(1)))
    with pytest.raises(ValueError, match="on_nonfinite"):
        fl.make_run(dataclasses.replace(BASE, on_nonfinite="ignore"), DIGITS, MLP)


@pytest.mark.slow
def test_every_robust_rule_survives_non_finite_attackers_when_skipping():
    """The issue's setting: M = 40 of K = 100, w = 10, 300 rounds on digits; rounds drawing more attackers than a
    rule tolerates are skipped, and every robust rule still ends at >= 0.85 accuracy."""
    model = models.get("mlp", 10, DIGITS.input_shape)
    rules = {"median": {}, "trimmed_mean": {"num_trim": 3}, "krum": {"num_byzantine": 3},
             "multi_krum": {"num_byzantine": 3}, "bulyan": {"num_byzantine": 1}, "dnc": {"num_byzantine": 3},
             "mda": {"num_byzantine": 3}, "bucketing": {"aggregator": "krum", "bucket_size": 2, "num_byzantine": 1},
             "geometric_median": {}, "clipped_median": {}, "centered_clipping": {"tau": 10.0}}
    for name, hparams in rules.items():
        config = fl.FLConfig(num_clients=100, num_malicious=40, clients_per_round=10, batch_size=8, lr=0.1,
                             rounds=300, eval_every=100, aggregator=name, aggregator_hparams=hparams,
                             attack="non_finite")
        _, history = jax.jit(fl.make_run(config, DIGITS, model))(jax.random.PRNGKey(0))
        assert float(history.test_accuracy[-1]) >= 0.85, (name, history.test_accuracy)
        assert int(np.sum(history.num_skipped)) >= 0
