"""The jitted FL simulation against a plain Python-loop reference, determinism, vmap, validation."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks import attacks, data, fl, models
from fedjax_attacks.fl.simulation import sample_batch, sample_clients

DIGITS = data.load("digits")
MLP = models.get("mlp", 10, DIGITS.input_shape, hidden=(16,))
SMALL = fl.FLConfig(num_clients=20, num_malicious=4, clients_per_round=5, batch_size=4, lr=0.1, rounds=4,
                    eval_every=2)


def _reference_rounds(config, key, num_rounds):
    """FedSGD with mean aggregation, one client at a time in Python, same key schedule as the simulation."""
    sim = fl.make_simulation(config, DIGITS, MLP)
    state = sim.init(key)
    params, k = np.asarray(state.params), state.key
    grad = jax.grad(MLP.loss)
    counts = []
    for _ in range(num_rounds):
        k, k_sample, k_batch, *_ = jax.random.split(k, 7)
        sampled = np.asarray(sample_clients(k_sample, config.num_clients, config.clients_per_round))
        batch_keys = jax.random.split(k_batch, (config.clients_per_round, 1))
        grads = []
        for i, client in enumerate(sampled):
            row, size = sim.partition.indices[client], sim.partition.sizes[client]
            idx = np.asarray(sample_batch(batch_keys[i, 0], jnp.asarray(row), size, config.batch_size))
            assert len(set(idx)) == config.batch_size and set(idx) <= set(row[:size])
            grads.append(np.asarray(grad(jnp.asarray(params), DIGITS.x_train[idx], DIGITS.y_train[idx])))
        params = params - config.lr * np.mean(grads, axis=0)
        counts.append(int(np.sum(sampled < config.num_malicious)))
    return params, counts


def test_jitted_run_equals_python_loop_reference():
    key = jax.random.PRNGKey(7)
    final, history = jax.jit(fl.make_run(SMALL, DIGITS, MLP))(key)
    expected, counts = _reference_rounds(SMALL, key, SMALL.rounds)
    np.testing.assert_allclose(final, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(history.num_malicious_selected, [counts[1], counts[3]])
    np.testing.assert_array_equal(history.round, [2, 4])
    accuracy = MLP.accuracy(jnp.asarray(expected), DIGITS.x_test, DIGITS.y_test)
    np.testing.assert_allclose(history.test_accuracy[-1], accuracy, atol=1e-6)


def test_sample_clients_is_without_replacement():
    ids = np.asarray(jax.vmap(lambda k: sample_clients(k, 12, 12))(jax.random.split(jax.random.PRNGKey(0), 5)))
    assert all(sorted(row) == list(range(12)) for row in ids)


def test_same_key_same_history_and_vmap_matches_single_runs():
    run = jax.jit(fl.make_run(SMALL, DIGITS, MLP))
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    batched_params, batched_history = jax.jit(jax.vmap(fl.make_run(SMALL, DIGITS, MLP)))(keys)
    for i in range(3):
        params, history = run(keys[i])
        np.testing.assert_allclose(batched_params[i], params, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batched_history.test_loss[i], history.test_loss, rtol=1e-5)
    again = run(keys[0])[1]
    np.testing.assert_array_equal(again.test_loss, run(keys[0])[1].test_loss)
    assert not np.allclose(batched_history.test_loss[0], batched_history.test_loss[1])


@pytest.mark.slow  # kept out of `make test` for time (10-minute budget); `make test-slow` runs it
def test_run_with_progress_matches_run():
    sim = fl.make_simulation(dataclasses.replace(SMALL, rounds=8), DIGITS, MLP)
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    params, history = fl.run_with_progress(sim, keys, chunk_blocks=2)
    expected_params, expected_history = jax.jit(jax.vmap(sim.run))(keys)
    np.testing.assert_allclose(params, expected_params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(history.test_accuracy, expected_history.test_accuracy)


def _probe_attack():
    """Every malicious row becomes the sum of the benign rows the attacker can see."""

    def craft(key, inp):
        benign_sum = jnp.sum(jnp.where(inp.malicious_mask[:, None], 0.0, inp.updates), axis=0)
        return jnp.broadcast_to(benign_sum, inp.updates.shape)

    return attacks.Attack(name="probe", craft=craft)


def test_partial_knowledge_hides_benign_updates():
    attacks.register("test_probe", _probe_attack)
    # K = w = 4: every client is sampled each round; clients 0, 1 are malicious.
    base = fl.FLConfig(num_clients=4, num_malicious=2, clients_per_round=4, batch_size=4, rounds=1, eval_every=1,
                       attack="test_probe")
    key = jax.random.PRNGKey(0)
    theta0 = fl.make_simulation(base, DIGITS, MLP).init(key).params
    full = jax.jit(fl.make_run(base, DIGITS, MLP))(key)[0] - theta0
    partial = jax.jit(fl.make_run(dataclasses.replace(base, knowledge="partial"), DIGITS, MLP))(key)[0] - theta0
    # partial: mean(0, 0, g2, g3); full: mean(g2+g3, g2+g3, g2, g3) = 3x that.
    np.testing.assert_allclose(full, 3 * partial, rtol=1e-4, atol=1e-6)  # float32 rounding of 3 * x (TF32 on GPU)


def test_fedavg_sends_deltas_and_learns():
    config = fl.FLConfig(num_clients=20, num_malicious=0, clients_per_round=5, batch_size=8, local_steps=3,
                         lr=0.1, rounds=100, eval_every=50, mode="fedavg")
    _, history = jax.jit(fl.make_run(config, DIGITS, MLP))(jax.random.PRNGKey(0))
    assert history.test_accuracy[-1] > 0.8


def test_mean_without_attack_reaches_90_percent_on_digits():
    config = fl.FLConfig(rounds=1000, eval_every=500, lr=0.1)
    model = models.get("mlp", 10, DIGITS.input_shape)
    _, history = jax.jit(fl.make_run(config, DIGITS, model))(jax.random.PRNGKey(0))
    assert history.test_accuracy[-1] >= 0.9


@pytest.mark.parametrize("changes,match", [
    ({"clients_per_round": 101}, "exceeds num_clients"),
    ({"num_malicious": 101}, "num_malicious"),
    ({"batch_size": 50}, "larger than the smallest client"),
    ({"aggregator": "nope"}, "unknown aggregator"),
    ({"attack": "nope"}, "unknown attack"),
    ({"rounds": 10, "eval_every": 3}, "must divide"),
    ({"mode": "fedprox"}, "mode"),
    ({"local_steps": 2}, "local_steps"),
    ({"unroll": 0}, "unroll"),
    ({"partition": "weird"}, "unknown partition"),
])
def test_bad_config_raises_before_tracing(changes, match):
    with pytest.raises(ValueError, match=match):
        fl.make_run(dataclasses.replace(fl.FLConfig(), **changes), DIGITS, MLP)


def test_full_knowledge_attack_refused_under_partial_knowledge():
    attacks.register("test_needs_full", lambda: attacks.Attack("x", lambda k, i: i.updates, needs_full_knowledge=True))
    with pytest.raises(ValueError, match="knowledge"):
        fl.make_run(fl.FLConfig(attack="test_needs_full", knowledge="partial"), DIGITS, MLP)


def test_model_must_match_data():
    with pytest.raises(ValueError, match="input shape"):
        fl.make_run(fl.FLConfig(), DIGITS, models.get("mlp", 10, (28, 28, 1)))


@pytest.mark.slow  # the scalar-index form of test_interfaces' vmapped sweep test
def test_attack_sweep_matches_separate_runs():
    members = [("none", {}), ("ipm", {"eps": 5.0})]
    config = dataclasses.replace(SMALL, aggregator="median")
    keys = jax.random.split(jax.random.PRNGKey(4), 2)
    sweep = fl.make_attack_sweep(config, DIGITS, MLP, members)
    for index, (name, hparams) in enumerate(members):
        expected = jax.jit(jax.vmap(fl.make_run(dataclasses.replace(config, attack=name, attack_hparams=hparams),
                                                DIGITS, MLP)))(keys)[1]
        np.testing.assert_allclose(sweep(keys, jnp.int32(index)).test_loss, expected.test_loss, rtol=1e-5)


def test_unrolled_rounds_give_the_same_run():
    key = jax.random.PRNGKey(5)
    rolled = jax.jit(fl.make_run(SMALL, DIGITS, MLP))(key)[0]
    unrolled = jax.jit(fl.make_run(dataclasses.replace(SMALL, unroll=2), DIGITS, MLP))(key)[0]
    np.testing.assert_allclose(unrolled, rolled, rtol=1e-5, atol=1e-6)


def test_attack_sweep_refuses_concrete_indices_outside_its_members():
    """``lax.switch`` clamps: index 5 (or -1) of two members would silently run the last (or first) one. Concrete
    indices, scalar or vector, are refused before anything is traced; traced ones are documented as clamped."""
    sweep = fl.make_attack_sweep(SMALL, DIGITS, MLP, [("none", {}), ("sign_flip", {})])
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    for index in (5, -1, 2, np.int32(2), jnp.int32(-1), jnp.array([0, 2]), np.array([-1, 1])):
        with pytest.raises(ValueError, match=r"attack_index .* \[0, 2\)"):
            sweep(keys, index)
        with pytest.raises(ValueError, match=r"attack_index .* \[0, 2\)"):
            sweep.lower(keys, index)
    for index in (True, 1.0, jnp.array([0.0, 1.0]), "1"):
        with pytest.raises(ValueError, match="attack_index"):
            sweep(keys, index)
    sweep.lower(keys, np.array([1, 0]))  # concrete indices in range pass the check (lowered, not compiled)
    assert jax.eval_shape(lambda i: sweep(keys, i), 5).test_accuracy.shape == (2, 2)  # traced: unchecked

# ----------------------------------------------------------------------------------------------------
# Strengthened: FL checks a wrong implementation fails
# FL checks a wrong implementation fails (issue 18): who is sampled, over many keys, against exact
# probabilities and an independent NumPy sampler; FedAvg's local steps and deltas against a loop reference.


MLP8 = models.get("mlp", 10, DIGITS.input_shape, hidden=(8,))


def _within(counts, probs, draws, sigmas=5.0):
    """Every count within ``sigmas`` binomial standard deviations of ``draws * p``."""
    expected = draws * np.asarray(probs)
    sd = np.sqrt(draws * np.asarray(probs) * (1 - np.asarray(probs))) + 1e-9
    return np.all(np.abs(np.asarray(counts) - expected) <= sigmas * sd + 1e-9)


def test_sample_clients_is_uniform_over_clients_pairs_and_positions():
    K, w, draws = 10, 3, 6000
    ids = np.asarray(jax.vmap(lambda k: sample_clients(k, K, w))(jax.random.split(jax.random.PRNGKey(0), draws)))
    assert all(len(set(row)) == w for row in ids) and ids.min() >= 0 and ids.max() < K
    inclusion = np.bincount(ids.ravel(), minlength=K)
    assert _within(inclusion, [w / K] * K, draws), inclusion
    member = np.zeros((draws, K), int)
    np.put_along_axis(member, ids, 1, axis=1)
    pairs = member.T @ member  # co-inclusion counts
    off = pairs[~np.eye(K, dtype=bool)]
    assert _within(off, [w * (w - 1) / (K * (K - 1))] * off.size, draws), off  # no favoured neighbours
    first = np.bincount(ids[:, 0], minlength=K)
    assert _within(first, [1 / K] * K, draws), first  # the order is random too (slot 0 is any client)


def _hypergeometric(K, M, w):
    return np.array([math.comb(M, j) * math.comb(K - M, w - j) / math.comb(K, w) for j in range(w + 1)])


def test_malicious_per_round_follows_hypergeometric_like_an_independent_sampler():
    """The run's sampled malicious count per round, over 1200 rounds (seeds x rounds), against the exact
    hypergeometric law and against a NumPy sampler that knows nothing of the library."""
    config = fl.FLConfig(num_clients=12, num_malicious=4, clients_per_round=5, batch_size=2, rounds=4, eval_every=1)
    sim = fl.make_simulation(config, DIGITS, MLP8)
    params = sim.default_params()

    def counts(key):
        state = sim.init(key)

        def body(state, _):
            rin = sim.client_updates(state, params)
            return state.replace(key=jax.random.split(state.key, 7)[0]), jnp.sum(rin.malicious_mask)

        return jax.lax.scan(body, state, None, length=4)[1]

    seen = np.asarray(jax.jit(jax.vmap(counts))(jax.random.split(jax.random.PRNGKey(5), 300))).ravel()
    pmf = _hypergeometric(12, 4, 5)
    hist = np.bincount(seen, minlength=6)
    assert _within(hist, pmf, seen.size), (hist, seen.size * pmf)
    rng = np.random.default_rng(0)
    independent = np.bincount([np.sum(rng.choice(12, 5, replace=False) < 4) for _ in range(seen.size)], minlength=6)
    assert np.abs(hist / seen.size - independent / seen.size).sum() < 0.12  # total variation, both ~ pmf


def test_fedavg_local_steps_and_deltas_match_a_loop_reference():
    """FedAvg with 3 local steps: each sampled client's update is (theta after 3 SGD steps on its own batches)
    minus theta, computed here one client and one step at a time; the server adds server_lr times their mean."""
    config = fl.FLConfig(num_clients=8, num_malicious=0, clients_per_round=3, batch_size=4, local_steps=3,
                         lr=0.3, server_lr=0.7, rounds=1, eval_every=1, mode="fedavg")
    sim = fl.make_simulation(config, DIGITS, MLP8)
    state = sim.init(jax.random.PRNGKey(2))
    state = state.replace(params=state.params + 0.05 * jax.random.normal(jax.random.PRNGKey(9), state.params.shape))
    rin = jax.jit(sim.client_updates)(state, sim.default_params())
    _, k_sample, k_batch, *_ = jax.random.split(state.key, 7)
    sampled = np.asarray(sample_clients(k_sample, 8, 3))
    np.testing.assert_array_equal(rin.sampled, sampled)
    batch_keys = jax.random.split(k_batch, (3, 3))
    grad = jax.jit(jax.grad(MLP8.loss))
    theta = np.asarray(state.params)
    expected, first_steps = [], []
    for i, client in enumerate(sampled):
        p = theta.copy()
        for step in range(3):
            row, size = sim.partition.indices[client], sim.partition.sizes[client]
            idx = np.asarray(sample_batch(batch_keys[i, step], jnp.asarray(row), size, 4))
            assert set(idx) <= set(row[:size])  # a client trains on its own data only
            p = p - 0.3 * np.asarray(grad(jnp.asarray(p), DIGITS.x_train[idx], DIGITS.y_train[idx]))
            if step == 0:
                first_steps.append(p - theta)
        expected.append(p - theta)
    np.testing.assert_allclose(rin.updates, np.stack(expected), rtol=2e-4, atol=1e-6)
    assert not np.allclose(rin.updates, np.stack(first_steps), atol=1e-4)  # the 3 steps matter
    new_state, _ = jax.jit(sim.server_step)(state, rin.updates, sim.default_params())
    np.testing.assert_allclose(new_state.params, theta + 0.7 * np.mean(expected, axis=0), rtol=1e-5, atol=1e-6)

# ----------------------------------------------------------------------------------------------------
# Written for mutants of fl/config.py and fl/simulation.py
# Tests added to kill the mutants of ``make mutation`` that survived the FL tests (issue 18): ``FLConfig.validate``
# on both sides of every boundary (``validate`` only: nothing is traced but the rule's abstract shapes), and the
# mini-batch sampler on a padded client row.


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
    round moves theta by lr * 2 * (1 / 4) more under partial knowledge; one malicious client is enough to attack);
    a client holding exactly B samples is enough, one sample fewer is refused."""
    from fedjax_attacks import attacks, data, models
    from fedjax_attacks.data import partition
    digits = data.load("digits")
    mlp = models.get("mlp", 10, digits.input_shape, hidden=(4,))
    probe = lambda key, inp: jnp.full(inp.updates.shape, 1.0 if inp.full_knowledge else -1.0)
    attacks.register("test_knowledge_probe", lambda: attacks.Attack(name="knowledge_probe", craft=probe))
    base = fl.FLConfig(num_clients=4, num_malicious=1, clients_per_round=4, batch_size=4, rounds=1, eval_every=1,
                       lr=0.1, attack="test_knowledge_probe")
    key = jax.random.PRNGKey(0)
    full, partial = (np.asarray(jax.jit(fl.make_run(dataclasses.replace(base, knowledge=k), digits, mlp))(key)[0])
                     for k in ("full", "partial"))
    np.testing.assert_allclose(partial - full, 0.1 * 2 * 1 / 4, rtol=1e-4)
    smallest = int(partition(digits.y_train, 4, "iid", seed=base.partition_seed).sizes.min())
    fl.make_simulation(dataclasses.replace(base, attack="none", batch_size=smallest), digits, mlp)
    with pytest.raises(ValueError, match="smallest client"):
        fl.make_simulation(dataclasses.replace(base, attack="none", batch_size=smallest + 1), digits, mlp)


def _numbered_dataset(num_classes=4, n=40):
    """Images whose every pixel is the sample's index (so a row names its sample), labels ``i % num_classes``."""
    from fedjax_attacks.data import Dataset
    x = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None, None], (n, 2, 2, 1)).copy()
    y = (np.arange(n) % num_classes).astype(np.int32)
    return Dataset("numbered", x, y, x[:8], y[:8], num_classes)


def test_simulation_root_data_switch_members_and_fields():
    """``make_simulation`` without tracing a round: the root set is ``root_size`` distinct training samples (drawn
    without replacement); a ``switch``'s ``label_flip`` member gets the dataset's class count (4 here, not the
    default 10); ``num_blocks`` is the int ``rounds // eval_every``; the ``Simulation`` is frozen; the server's own
    update ``g0`` is computed only where the rule needs it (FLTrust), for the attackers and for the server; a switch
    starts at its ``index`` (0 when it names none)."""
    from fedjax_attacks import models
    dataset = _numbered_dataset()
    mlp = models.get("mlp", 4, dataset.input_shape, hidden=(3,))
    config = fl.FLConfig(num_clients=4, num_malicious=1, clients_per_round=4, batch_size=2, rounds=6, eval_every=3,
                         root_size=30, attack="switch",
                         attack_hparams={"members": (("label_flip", {}), ("none", {})), "index": 0})
    sim = fl.make_simulation(config, dataset, mlp)
    root = np.asarray(sim.data.x_root)[:, 0, 0, 0]
    assert len(root) == 30 and len(np.unique(root)) == 30  # with replacement: P(30 distinct of 40) ~ 1e-6
    np.testing.assert_array_equal(np.asarray(sim.data.y_root), root.astype(int) % 4)
    assert sim.config.attack_hparams["members"][0] == ("label_flip", {"num_classes": 4})
    assert sim.num_blocks == 2 and isinstance(sim.num_blocks, int)
    for hparams, index in (({"index": 1}, 1), ({}, 0)):  # a switch without an index starts at its first member
        switch = dataclasses.replace(config, attack_hparams={"members": config.attack_hparams["members"], **hparams})
        assert int(fl.make_simulation(switch, dataset, mlp).default_params().attack_index) == index
    with pytest.raises(dataclasses.FrozenInstanceError):
        sim.num_blocks = 3
    for rule, needed in (("mean", False), ("fltrust", True)):
        sim = fl.make_simulation(dataclasses.replace(config, aggregator=rule, attack="none", attack_hparams={}),
                                 dataset, mlp)
        state, params = sim.init(jax.random.PRNGKey(0)), sim.default_params()
        rin = jax.eval_shape(sim.client_updates, state, params)
        assert (rin.server_update is not None) == needed
        if needed:
            assert rin.server_update.shape == state.params.shape
        jax.eval_shape(sim.server_step, state, rin.updates, params)  # FLTrust without g0 fails here


def test_simulation_history_counts_the_last_round_and_traced_rule_hyperparameters_apply():
    """``History.num_malicious_selected`` is the attacker count of a block's last round (3 rounds per block here, the
    counts of rounds 2 and 3 differ), and ``FLParams.aggregator_hparams`` replaces the config's (centered clipping
    with a traced tau = 0.1 steps as the config with tau = 0.1 does, not as tau = 1)."""
    from fedjax_attacks import models
    dataset = _numbered_dataset()
    mlp = models.get("mlp", 4, dataset.input_shape, hidden=(3,))
    config = fl.FLConfig(num_clients=8, num_malicious=4, clients_per_round=4, batch_size=2, rounds=3, eval_every=3,
                         aggregator="centered_clipping", aggregator_hparams={"tau": 1.0})
    sim = fl.make_simulation(config, dataset, mlp)
    params = sim.default_params()
    submitted = 3.0 + jax.random.normal(jax.random.PRNGKey(1), (4, mlp.num_params))
    for seed in range(20):  # a key whose last two rounds draw different attacker counts
        state = start = sim.init(jax.random.PRNGKey(seed))
        counts = []
        for _ in range(3):  # the counts depend on the keys only: cheap eager server steps on fixed updates
            state, metrics = sim.server_step(state, submitted, params)
            counts.append(int(metrics["num_malicious"]))
        if counts[1] != counts[2]:
            break
    assert counts[1] != counts[2]
    _, history = jax.jit(sim.step)(start)
    assert int(history.num_malicious_selected) == counts[2]
    traced = params.replace(aggregator_hparams={"tau": jnp.float32(0.1)})
    moved = jax.jit(sim.server_step)(start, submitted, traced)[0].params  # an override is traced
    small = fl.make_simulation(dataclasses.replace(config, aggregator_hparams={"tau": 0.1}), dataset, mlp)
    np.testing.assert_allclose(moved, small.server_step(start, submitted, params)[0].params, rtol=1e-6)
    assert not np.allclose(moved, sim.server_step(start, submitted, params)[0].params, atol=1e-3)


def test_attack_sweep_runs_one_member_for_a_scalar_index_and_every_member_for_a_vector():
    """``make_attack_sweep``'s ``sweep(keys, index)``: a scalar index gives one History per seed, an int32[A] vector a
    leading axis A (shapes only: ``jax.eval_shape`` traces, nothing compiles)."""
    from fedjax_attacks import models
    dataset = _numbered_dataset()
    mlp = models.get("mlp", 4, dataset.input_shape, hidden=(3,))
    config = fl.FLConfig(num_clients=4, num_malicious=1, clients_per_round=4, batch_size=2, rounds=4, eval_every=2)
    sweep = fl.make_attack_sweep(config, dataset, mlp, [("none", {}), ("sign_flip", {})])
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    assert jax.eval_shape(sweep, keys, 1).test_accuracy.shape == (3, 2)
    assert jax.eval_shape(sweep, keys, jnp.arange(2)).test_accuracy.shape == (2, 3, 2)


def test_raise_names_the_first_non_finite_round_of_a_block():
    """``on_nonfinite="raise"`` names the first non-finite round of the block it checks (rounds 5 and 6 here)."""
    from fedjax_attacks.fl.simulation import _raise_if_nonfinite
    _raise_if_nonfinite(np.array([False, False]), np.array([4, 5]))  # finite: nothing raised
    with pytest.raises(FloatingPointError, match="FL round 5:"):
        _raise_if_nonfinite(np.array([False, True, True]), np.array([4, 5, 6]))
