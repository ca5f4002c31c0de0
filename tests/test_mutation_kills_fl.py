"""Tests added to kill the mutants of ``make mutation`` that survived the FL tests (issue 18): ``FLConfig.validate``
on both sides of every boundary (``validate`` only: nothing is traced but the rule's abstract shapes), and the
mini-batch sampler on a padded client row."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks import fl

EDGE = fl.FLConfig(num_clients=10, num_malicious=10, clients_per_round=10, rounds=6, eval_every=6, q=0.0,
                   partition_seed=0, root_size=1, unroll=1)


@pytest.mark.parametrize("changes", [
    {}, {"num_malicious": 0}, {"q": 1.0}, {"alpha": 1e-6}, {"mode": "fedavg", "local_steps": 3},
    {"eval_every": 1}, {"eval_every": 3}, {"lr": 1e-9, "server_lr": 1e-9}, {"knowledge": "partial"},
    {"on_nonfinite": "raise"}, {"on_nonfinite": "apply"}, {"partition": "dirichlet"},
    {"aggregator": "krum", "aggregator_hparams": {"num_byzantine": 2}, "clients_per_round": 7},
    {"aggregator": "trimmed_mean", "aggregator_hparams": {"num_trim": 4}, "clients_per_round": 9},
    {"aggregator": "fltrust"}, {"aggregator": "nnm"}, {"batch_size": 1, "local_steps": 1, "num_clients": 1,
                                                       "num_malicious": 1, "clients_per_round": 1},
])
def test_fl_config_accepts_every_boundary(changes):
    dataclasses.replace(EDGE, **changes).validate()


@pytest.mark.parametrize("changes, match", [
    ({"num_malicious": 11}, r"num_malicious M=11 must be in \[0, num_clients K=10\]"),
    ({"num_malicious": -1}, "num_malicious must be an integer >= 0"),
    ({"partition_seed": -1}, "partition_seed must be an integer >= 0"),
    ({"clients_per_round": 11}, "clients_per_round w=11 exceeds num_clients K=10"),
    ({"eval_every": 4}, "eval_every=4 must divide rounds=6"),
    ({"eval_every": 12}, "eval_every=12 must divide rounds=6"),
    ({"local_steps": 2}, "local_steps must be 1"),
    ({"q": -0.01}, "q must be a number in"), ({"q": 1.01}, "q must be a number in"),
    ({"alpha": 0.0}, "alpha must be a finite number > 0"), ({"alpha": float("inf")}, "alpha"),
    ({"lr": 0.0}, "lr"), ({"server_lr": -1.0}, "server_lr"),
    ({"mode": "fedprox"}, "mode must be one of"), ({"knowledge": "some"}, "knowledge must be one of"),
    ({"on_nonfinite": "ignore"}, "on_nonfinite must be one of"), ({"partition": "shards"}, "unknown partition"),
    ({"aggregator": "krum", "aggregator_hparams": {"num_byzantine": 2}, "clients_per_round": 6},
     "cannot aggregate clients_per_round w=6"),
    ({"aggregator": "trimmed_mean", "aggregator_hparams": {"num_trim": 4}, "clients_per_round": 8},
     "cannot aggregate clients_per_round w=8"),
    ({"aggregator": len}, "must be a registry name"),
] + [({name: 0}, f"{name} must be an integer >= 1") for name in (
    "num_clients", "clients_per_round", "batch_size", "local_steps", "rounds", "eval_every", "root_size",
    "unroll")])
def test_fl_config_refuses_just_past_each_boundary(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(EDGE, **changes).validate()


def test_fl_config_defaults_and_frozen():
    """Kills every default replaced by a neighbour and ``frozen=True`` -> ``False`` (the defaults are the seed
    paper's setting the benchmarks rely on: K = 100, M = 20, w = 10, B = 8, eta = 0.1, ...)."""
    config = fl.FLConfig()
    expected = {"num_clients": 100, "num_malicious": 20, "clients_per_round": 10, "batch_size": 8, "local_steps": 1,
                "lr": 0.1, "server_lr": 1.0, "rounds": 1000, "eval_every": 50, "q": 0.5, "alpha": 0.5,
                "partition_seed": 0, "root_size": 100, "unroll": 1}
    assert {name: getattr(config, name) for name in expected} == expected
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rounds = 3


def test_fl_config_accepts_a_stateful_rule():
    """Centered clipping keeps a centre of the update's width: the abstract check must build its state for the
    same width as the rows it traces (kills ``rule.init(2)`` -> ``rule.init(3)``)."""
    dataclasses.replace(EDGE, aggregator="centered_clipping").validate()


def test_sample_batch_draws_distinct_valid_ids_uniformly_from_a_padded_row():
    """A client's padded index row (5 valid ids, 3 padding): over 4000 keys every batch holds B distinct valid ids,
    never padding (a sampler that prefers the largest scores, or counts one slot past ``size``, draws padding), and
    each valid id is drawn with probability B / size; at B = size the batch is the whole client."""
    from fedjax_attacks.fl.simulation import sample_batch
    row = jnp.asarray([100, 101, 102, 103, 104, -1, -1, -1], jnp.int32)
    keys = jax.random.split(jax.random.PRNGKey(9), 4000)
    drawn = np.asarray(jax.jit(jax.vmap(lambda k: sample_batch(k, row, jnp.int32(5), 2)))(keys))
    assert drawn.shape == (4000, 2) and np.all(drawn >= 100) and np.all(drawn[:, 0] != drawn[:, 1])
    freq = np.bincount(drawn.ravel() - 100, minlength=5) / 4000
    np.testing.assert_allclose(freq, 2 / 5, atol=0.03)  # binomial sd ~ 0.008
    whole = np.asarray(jax.jit(lambda k: sample_batch(k, row, jnp.int32(5), 5))(keys[0]))
    assert sorted(whole.tolist()) == [100, 101, 102, 103, 104]


def test_attacks_are_told_the_knowledge_setting_and_clients_may_hold_exactly_one_batch():
    """``AttackInput.full_knowledge`` is ``knowledge == "full"`` (a probe attack sends +1 or -1 by it: one FedSGD
    round moves theta by lr * 2 * (2 / 4) more under partial knowledge); a client holding exactly B samples is
    enough, one sample fewer is refused."""
    from fedjax_attacks import attacks, data, models
    from fedjax_attacks.data import partition
    digits = data.load("digits")
    mlp = models.get("mlp", 10, digits.input_shape, hidden=(4,))
    attacks.register("test_knowledge_probe", lambda: attacks.Attack(
        name="knowledge_probe", craft=lambda key, inp: jnp.full(inp.updates.shape, 1.0 if inp.full_knowledge else -1.0)))
    base = fl.FLConfig(num_clients=4, num_malicious=2, clients_per_round=4, batch_size=4, rounds=1, eval_every=1,
                       lr=0.1, attack="test_knowledge_probe")
    key = jax.random.PRNGKey(0)
    full, partial = (np.asarray(jax.jit(fl.make_run(dataclasses.replace(base, knowledge=k), digits, mlp))(key)[0])
                     for k in ("full", "partial"))
    np.testing.assert_allclose(partial - full, 0.1 * 2 * 2 / 4, rtol=1e-4)
    smallest = int(partition(digits.y_train, 4, "iid", seed=base.partition_seed).sizes.min())
    fl.make_simulation(dataclasses.replace(base, attack="none", batch_size=smallest), digits, mlp)
    with pytest.raises(ValueError, match="smallest client"):
        fl.make_simulation(dataclasses.replace(base, attack="none", batch_size=smallest + 1), digits, mlp)
