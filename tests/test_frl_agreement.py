"""MDA / GDA and the Byzantine behaviours against brute-force references."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedjax_attacks import attacks, frl
from fedjax_attacks.frl import agreement as agr
from fedjax_attacks.frl import byzantine as byz


def brute_mda(x, f):
    n = len(x)
    best, best_diam = None, np.inf
    for subset in itertools.combinations(range(n), n - f):
        diam = max((np.linalg.norm(x[a] - x[b]) for a in subset for b in subset), default=0.0)
        if diam < best_diam - 1e-9:
            best, best_diam = subset, diam
    return x[list(best)].mean(0)


def brute_gda(own, x, f):
    order = np.argsort([np.linalg.norm(v - own) for v in x], kind="stable")
    return x[order[: len(x) - f]].mean(0)


@pytest.mark.slow  # make test: test_frl_coverage checks agreement against brute-force rounds at one size
@settings(max_examples=8, deadline=None)
@given(nf=st.sampled_from([(2, 1), (5, 0), (5, 2), (7, 2)]), seed=st.integers(0, 2**31 - 1))
def test_mda_and_gda_match_brute_force(nf, seed):
    n, f = nf  # few distinct shapes: each (n, f) compiles once
    x = np.random.default_rng(seed).normal(size=(n, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(agr.mda(jnp.asarray(x), f)), brute_mda(x.astype(np.float64), f),
                               rtol=1e-5, atol=1e-5)
    own = x[0]
    np.testing.assert_allclose(np.asarray(agr.gda(jnp.asarray(own), jnp.asarray(x), f)), brute_gda(own, x, f),
                               rtol=1e-5, atol=1e-5)


def test_mda_ignores_far_and_non_finite_vectors():
    honest = np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32)
    x = np.concatenate([honest, [[1e3] * 4, [np.nan] * 4]]).astype(np.float32)
    np.testing.assert_allclose(np.asarray(agr.mda(jnp.asarray(x), 2)), honest.mean(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(agr.gda(jnp.asarray(honest[0]), jnp.asarray(x), 2)), honest.mean(0),
                               rtol=1e-5)


@pytest.mark.parametrize("rule", ["mda", "gda"])
@pytest.mark.parametrize("behaviour", ["large_noise", "avg_zero"])
def test_agreement_shrinks_honest_diameter(rule, behaviour):
    n, f = 7, 2
    params = jax.random.normal(jax.random.PRNGKey(0), (n, 10))
    byzantine = byz.byzantine_mask(jax.random.PRNGKey(1), n, f, resample=True)
    honest = ~byzantine
    before = float(agr.diameter(params, honest))
    honest_hull_max = np.abs(np.asarray(params)[np.asarray(honest)]).max()
    after = agr.average_agreement(jax.random.PRNGKey(2), rule, params, byzantine, attacks.get(behaviour), f,
                                  num_rounds=3)
    assert float(agr.diameter(after, honest)) < 0.5 * before
    # the honest agents stay within the honest inputs' range (the Byzantine vectors were filtered out)
    assert np.abs(np.asarray(after)[np.asarray(honest)]).max() <= honest_hull_max + 1e-5


def test_avg_zero_makes_the_plain_average_zero():
    n, f = 6, 2
    grads = jax.random.normal(jax.random.PRNGKey(0), (n, 5))
    byzantine = jnp.array([False, True, False, False, True, False])
    received = byz.received(jax.random.PRNGKey(1), attacks.get("avg_zero"), grads, byzantine, 0)
    np.testing.assert_allclose(np.asarray(received.mean(0)), 0.0, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(received)[~np.asarray(byzantine)],
                                  np.asarray(grads)[~np.asarray(byzantine)])
    assert int(byz.byzantine_mask(jax.random.PRNGKey(2), n, f, resample=False).sum()) == f


def test_large_noise_differs_per_recipient_and_keeps_honest_messages():
    n = 5
    vectors = jnp.ones((n, 3))
    byzantine = jnp.array([True, False, False, False, False])
    messages = np.asarray(byz.broadcast(jax.random.PRNGKey(0), attacks.get("large_noise"), vectors, byzantine, 0))
    assert messages.shape == (n, n, 3)
    assert np.all(messages[:, 1:] == 1.0)
    assert np.all(np.abs(messages[:, 0]) <= 1000.0) and np.abs(messages[:, 0]).max() > 100.0
    assert len({tuple(np.round(m, 3)) for m in messages[:, 0]}) == n  # a different vector for each recipient


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="unknown attack"):
        frl.DecByzPGConfig(num_byzantine=1, attack="flip").validate()
    with pytest.raises(ValueError, match="agreement rule"):
        agr.check_rule("median", 5, 1)
    with pytest.raises(ValueError, match="num_byzantine"):
        agr.check_rule("mda", 5, 5)


def test_alie_messages_sit_z_sigma_below_the_honest_mean():
    vectors = jax.random.normal(jax.random.PRNGKey(0), (7, 4)) + 2.0
    byzantine = jnp.array([True, False, False, True, False, False, False])
    received = np.asarray(byz.received(jax.random.PRNGKey(1), attacks.get("alie", z=1.5), vectors, byzantine, 0))
    honest = np.asarray(vectors)[~np.asarray(byzantine)]
    expected = honest.mean(0) - 1.5 * honest.std(0)
    np.testing.assert_allclose(received[np.asarray(byzantine)], np.broadcast_to(expected, (2, 4)), rtol=1e-5)
    np.testing.assert_array_equal(received[~np.asarray(byzantine)], honest)

# ----------------------------------------------------------------------------------------------------
# Written for mutants of frl/agreement.py and frl/byzantine.py
# Tests added to kill the mutants of ``make mutation`` that survived the FRL agreement tests (issue 18): the rule
# checks on both sides of each bound, distances and diameters against NumPy (with and without a mask).


X = (np.random.default_rng(1).normal(size=(5, 3)) * [1.0, 4.0, 0.5] + 20.0).astype(np.float32)


def test_check_rule_bounds():
    for rule, n, f in (("mda", 5, 0), ("gda", 5, 4), ("none", 2, 1), ("mda", 100_000, 1), ("mda", 17, 4),
                       ("gda", 20, 10)):  # GDA has no subset search
        agr.check_rule(rule, n, f)  # C(100000, 1) = 100000 subsets: exactly the limit
    for rule, n, f, match in (("gda", 5, -1, "num_byzantine"), ("gda", 5, 5, "num_byzantine"),
                              ("mda", 100_001, 1, "too large"), ("mda", 20, 10, "too large"),
                              ("avg", 5, 1, "unknown agreement rule")):
        with pytest.raises(ValueError, match=match):
            agr.check_rule(rule, n, f)


def test_distances_and_diameter_match_numpy():
    x64 = X.astype(np.float64)
    dist = np.linalg.norm(x64[:, None] - x64[None], axis=-1)
    np.testing.assert_allclose(agr.pairwise_distances(jnp.asarray(X)), dist, rtol=1e-5, atol=1e-4)
    assert float(agr.diameter(jnp.asarray(X))) == pytest.approx(dist.max(), rel=1e-5)
    mask = np.array([True, False, True, True, False])
    sub = dist[np.ix_(mask, mask)]
    assert float(agr.diameter(jnp.asarray(X), jnp.asarray(mask))) == pytest.approx(sub.max(), rel=1e-5)
    assert sub.max() < dist.max()  # the mask matters
    for one_or_none in ([False, False, True, False, False], [False] * 5):  # no pair: diameter 0
        assert float(agr.diameter(jnp.asarray(X), jnp.asarray(one_or_none))) == 0.0


def test_agree_once_none_and_one_mda_round():
    byzantine = jnp.asarray([True, False, False, False, False])
    params = jnp.asarray(X)
    assert agr.agree_once(jax.random.key(0), "none", params, byzantine, attacks.get("large_noise"), 1) is params
    got = np.asarray(agr.agree_once(jax.random.key(0), "mda", params, byzantine, attacks.get("none"), 1))
    np.testing.assert_allclose(got, np.broadcast_to(agr.mda(params, 1), X.shape), rtol=1e-6)


def test_agreement_attacks_see_round_zero_by_default():
    """The Byzantine message here is the round index it is shown (``AttackInput.round``); GDA around 0 keeps it,
    so the default ``round_index=0`` of ``agree_once`` and ``average_agreement`` shows in the result."""
    probe = attacks.Attack("round_probe", lambda key, inp: jnp.full_like(inp.updates, inp.round))
    params = jnp.asarray([[50.0], [-10.0], [0.0], [10.0]])
    byzantine = jnp.asarray([True, False, False, False])
    want = (-10.0 + 0.0 + 0.0) / 3  # agent 2 (at 0) keeps itself, the probe's 0 and -10 (lowest index on the tie)
    once = agr.agree_once(jax.random.key(0), "gda", params, byzantine, probe, 1)
    assert float(once[2, 0]) == pytest.approx(want)
    later = agr.agree_once(jax.random.key(0), "gda", params, byzantine, probe, 1, round_index=3)
    assert float(later[2, 0]) == pytest.approx((-10.0 + 0.0 + 3.0) / 3)
    rounds = agr.average_agreement(jax.random.key(0), "gda", params, byzantine, probe, 1, num_rounds=1)
    assert float(rounds[2, 0]) == pytest.approx(want)


# ----------------------------------------------------------------------------------------------- frl/config.py
from fedjax_attacks.frl import config as cfg  # noqa: E402

SMALL = frl.DecByzPGConfig(num_agents=5, num_byzantine=1, attack="large_noise", aggregator="median",
                           large_batch=5, small_batch=2, horizon=4, hidden=(4,), agreement="gda")


def _replace(**changes):
    import dataclasses
    return dataclasses.replace(SMALL, **changes)


def test_presets_and_behaviours_are_the_papers():
    """Table 1 (CartPole), the LunarLander hyperparameters on Acrobot and the brax preset (CartPole's but tanh
    hidden units and H = 200), field by field (mutated defaults)."""
    want = dict(env_name="CartPole-v1", num_agents=13, num_byzantine=0, attack="none", random_actions=False,
                per_recipient=True, resample_byzantine=False, aggregator="rfa", bucket_size=1, large_batch=50,
                small_batch=4, switch_prob=0.2, learning_rate=5e-3, importance_weights="trajectory", gamma=0.999,
                horizon=500, hidden=(16, 16), activation="relu", output_activation="tanh",
                allow_byzantine_majority=False, agreement="mda", agreement_rounds=0, aggregate_every_iteration=False)
    for preset, changes in ((frl.CARTPOLE, {}), (frl.ByzPGConfig(), {}),
                            (frl.ACROBOT, dict(env_name="Acrobot-v1", hidden=(64, 64), activation="tanh",
                                               large_batch=96, small_batch=32, learning_rate=1e-3, horizon=500)),
                            (frl.INVERTED_PENDULUM, dict(env_name="brax:inverted_pendulum", activation="tanh",
                                                         horizon=200))):
        for field, value in {**want, **changes}.items():
            if hasattr(preset, field):
                assert getattr(preset, field) == value, (preset, field)
        preset.validate()
    assert dict(frl.BEHAVIOURS) == {"random_action": {"random_actions": True},
                                    "large_noise": {"attack": "large_noise"}, "avg_zero": {"attack": "avg_zero"}}


def test_validate_accepts_the_edges_and_refuses_past_them():
    for ok in (dict(num_byzantine=0, attack="none"), dict(num_byzantine=2), dict(num_agents=5, num_byzantine=4,
               allow_byzantine_majority=True), dict(switch_prob=1.0), dict(gamma=1.0), dict(num_agents=1,
               num_byzantine=0, attack="none"), dict(attack="none", random_actions=True),
               dict(importance_weights="per_step"), dict(agreement_rounds=0), dict(agreement_rounds=2),
               dict(large_batch=1, small_batch=1, horizon=1, bucket_size=1), dict(num_byzantine=np.int64(1))):
        _replace(**ok).validate()
    for bad, match in ((dict(num_byzantine=5, allow_byzantine_majority=True), "0 <= num_byzantine < num_agents"),
                       (dict(num_byzantine=-1), "num_byzantine"), (dict(num_agents=4, num_byzantine=2), "majority"),
                       (dict(num_agents=6, num_byzantine=3), "majority"),
                       (dict(num_byzantine=0), "behaviour"), (dict(num_byzantine=0, attack="none",
                                                                   random_actions=True), "behaviour"),
                       (dict(attack="none"), "behaviour"), (dict(switch_prob=0.0), "switch_prob"),
                       (dict(switch_prob=1.01), "switch_prob"), (dict(gamma=0.0), "gamma"), (dict(gamma=1.01), "gamma"),
                       (dict(importance_weights="per_episode"), "importance_weights"),
                       (dict(aggregator="fltrust"), "server"), (dict(aggregator="norm_clip"), "pre-aggregator"),
                       (dict(agreement_rounds=True), "agreement_rounds"), (dict(agreement_rounds=-1), "agreement_rounds"),
                       (dict(agreement_rounds=1.0), "agreement_rounds"), (dict(agreement="avg"), "agreement rule"),
                       (dict(bucket_size=0), "bucket_size"), (dict(horizon=0), "horizon"),
                       (dict(large_batch=0), "large_batch"), (dict(small_batch=0), "small_batch"),
                       (dict(num_agents=0, num_byzantine=0, attack="none"), "num_agents")):
        with pytest.raises(ValueError, match=match):
            _replace(**bad).validate()
    for flag in ("allow_byzantine_majority", "random_actions", "per_recipient"):
        with pytest.raises(ValueError, match=flag):
            _replace(**{flag: 1}).validate()


def test_num_rounds_is_ceil_log2_k():
    for k, want in ((1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (8, 3), (9, 4), (13, 4)):
        assert frl.DecByzPGConfig(num_agents=k).num_rounds == want == max(1, int(np.ceil(np.log2(k))))
    assert frl.DecByzPGConfig(num_agents=13, agreement_rounds=2).num_rounds == 2


def test_check_switches_and_counts():
    np.testing.assert_array_equal(cfg.check_switches([True, False]), [True, False])
    for coins, match in (([], "non-empty"), ([[True], [False]], "1-d"), ([1, 0], "booleans")):
        with pytest.raises(ValueError, match=match):
            cfg.check_switches(coins)
    assert bool(jax.jit(lambda c: cfg.check_switches(c)[1])(jnp.asarray([False, True])))  # traced: unchecked
    assert cfg._check_int("n", np.int32(1)) == 1
    for value, minimum in ((True, 0), (0, 1), (1, 2), (1.0, 1), ("1", 1)):
        with pytest.raises(ValueError, match="n must be an integer"):
            cfg._check_int("n", value, minimum)
    assert cfg._check_int("n", 0, minimum=0) == 0
    np.testing.assert_array_equal(cfg.trajectories_per_iteration([True, False, False], SMALL), [5, 2, 2])


def _coins(key, p, size=400):
    coins = np.array(jax.random.bernoulli(key, p, (size,)))  # threefry is partitionable: a prefix of any longer draw
    coins[0] = True
    return coins


def _run_length(counts, max_trajectories, multiple_of):
    total, t = 0, 0
    while total < max_trajectories:
        total, t = total + counts[t], t + 1
    return -(-t // multiple_of) * multiple_of


@pytest.mark.parametrize("N, B, p, T, m", [(5, 2, 0.3, 37, 8), (1, 4, 1e-6, 10, 1), (3, 2, 1.0, 10, 1),
                                           (1, 4, 1.0, 10, 1)])
def test_sample_switches_matches_a_loop(N, B, p, T, m):
    """The coins of a run: ``c_0 = 1`` and the fewest iterations reaching ``T`` trajectories, rounded up to ``m``
    (also when ``N < B``, where every large batch is smaller than a small one)."""
    config = _replace(large_batch=N, small_batch=B, switch_prob=p)
    key = jax.random.key(7)
    coins = _coins(key, p)
    want = coins[:_run_length(np.where(coins, N, B), T, m)]
    got = frl.sample_switches(key, config, T, multiple_of=m)
    np.testing.assert_array_equal(got, want)
    assert got[0] and len(got) % m == 0


def _blocks_loop(coins, N, B):
    rows = []
    for c in coins:
        if c:
            j, left = 0, N
            while left > 0:
                rows.append((True, j, min(B, left), left <= B))
                j, left = j + 1, left - B
        else:
            rows.append((False, 0, B, True))
    return [np.array(a) for a in zip(*rows)]


@pytest.mark.parametrize("N, B", [(5, 2), (6, 2), (2, 5), (7, 3), (1, 1)])
def test_block_and_iteration_schedules_match_loops(N, B):
    config = _replace(large_batch=N, small_batch=B)
    coins = np.array([True, False, True, True, False, False, True])
    assert cfg.blocks_per_large_batch(config) == int(np.ceil(N / B))
    got = frl.block_schedule(coins, config)
    for a, w in zip(got, _blocks_loop(coins, N, B)):
        np.testing.assert_array_equal(a, w)
    assert got.index.dtype == np.int32 and got.count.dtype == np.int32
    it = frl.iteration_schedule(coins, config)
    np.testing.assert_array_equal(it.large, coins)
    np.testing.assert_array_equal(it.index, 0)
    np.testing.assert_array_equal(it.count, np.where(coins, N, B))
    np.testing.assert_array_equal(it.last, True)


@pytest.mark.parametrize("N, B, p, T, S, m, whole", [(5, 2, 0.3, 23, 3, 4, False), (5, 2, 0.3, 23, 2, 4, True),
                                                     (7, 3, 1.0, 14, 2, 1, False), (2, 5, 1.0, 9, 1, 1, False),
                                                     (1, 4, 1e-6, 9, 1, 1, False)])
def test_sample_block_schedules_match_a_loop(N, B, p, T, S, m, whole):
    config = _replace(large_batch=N, small_batch=B, switch_prob=p)
    key = jax.random.key(3)
    per_seed = []
    for s in range(S):
        coins = _coins(jax.random.fold_in(key, s), p)
        if whole:
            per_seed.append([coins, np.zeros(len(coins), int), np.where(coins, N, B), np.ones(len(coins), bool)])
        else:
            per_seed.append(_blocks_loop(coins, N, B))
    length = max(_run_length(rows[2], T, 1) for rows in per_seed)
    length = -(-length // m) * m
    got = frl.sample_block_schedules(key, config, T, S, multiple_of=m, whole_iterations=whole)
    for field, a in zip(cfg.Blocks._fields, got):
        np.testing.assert_array_equal(a, np.stack([rows[cfg.Blocks._fields.index(field)][:length]
                                                   for rows in per_seed]), err_msg=field)


# -------------------------------------------------------------------------------------------- frl/byzantine.py


def test_byzantine_mask_first_f_or_a_random_set():
    key = jax.random.key(11)
    np.testing.assert_array_equal(byz.byzantine_mask(key, 6, 2, resample=False), [1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(byz.byzantine_mask(key, 6, 2, resample=True),
                                  np.asarray(jax.random.permutation(key, 6)) < 2)
    assert not np.array_equal(byz.byzantine_mask(key, 6, 2, resample=True), [1, 1, 0, 0, 0, 0])


@pytest.mark.parametrize("make_key", [jax.random.key, jax.random.PRNGKey])  # typed key[n] / raw uint32[n, 2] keys
def test_broadcast_hands_each_recipient_its_own_state_and_key(make_key):
    """An aggregator-aware probe: the Byzantine row is the recipient's aggregator state plus a number drawn from
    its aggregator key, so who receives which state and key shows (per recipient, or recipient 0's for all)."""
    probe = attacks.Attack("state_probe", lambda key, inp: jnp.broadcast_to(
        inp.aggregator_state + jax.random.uniform(inp.aggregator_key, ()), inp.updates.shape))
    n, d = 4, 3
    vectors = jnp.arange(n * d, dtype=jnp.float32).reshape(n, d) + 50.0
    byzantine = jnp.asarray([False, True, False, False])
    states = 10.0 * jnp.arange(n * d, dtype=jnp.float32).reshape(n, d) + 3.0
    keys = jax.random.split(make_key(5), n)
    draws = np.asarray([jax.random.uniform(k, ()) for k in keys])
    for per_recipient in (True, False):
        got = np.asarray(byz.broadcast(jax.random.key(0), probe, vectors, byzantine, 0, per_recipient, None,
                                       states, keys))
        rows = np.arange(n) if per_recipient else np.zeros(n, int)
        np.testing.assert_allclose(got[:, 1], np.asarray(states)[rows] + draws[rows, None], rtol=1e-6)
        np.testing.assert_array_equal(got[:, [0, 2, 3]], np.broadcast_to(np.asarray(vectors)[[0, 2, 3]],
                                                                         (n, 3, d)))
    stateless = attacks.Attack("constant", lambda key, inp: jnp.full_like(inp.updates, -7.0))
    for per_recipient in (True, False):
        got = np.asarray(byz.broadcast(jax.random.key(0), stateless, vectors, byzantine, 0, per_recipient))
        np.testing.assert_array_equal(got[:, 1], -7.0)
    plain = np.asarray(byz.broadcast(jax.random.key(0), attacks.get("none"), vectors, byzantine, 0))
    np.testing.assert_array_equal(plain, np.broadcast_to(np.asarray(vectors), (n, n, d)))


def test_schedule_defaults_are_one_step_multiples_of_blocks():
    """``multiple_of=1`` and block steps are the defaults of both samplers."""
    config = _replace(large_batch=5, small_batch=2, switch_prob=0.3)
    key = jax.random.key(3)
    np.testing.assert_array_equal(frl.sample_switches(key, config, 23), frl.sample_switches(key, config, 23, 1))
    default = frl.sample_block_schedules(key, config, 23, 2)
    explicit = frl.sample_block_schedules(key, config, 23, 2, multiple_of=1, whole_iterations=False)
    for a, b in zip(default, explicit):
        np.testing.assert_array_equal(a, b)


def test_byzpg_config_checks_its_counts_without_the_agreement():
    """ByzPGConfig has no agreement rule to catch a bad ``f``: its own checks must (f >= 0, f < K)."""
    with pytest.raises(ValueError, match="num_byzantine must be an integer >= 0"):
        frl.ByzPGConfig(num_agents=5, num_byzantine=-1).validate()
    with pytest.raises(ValueError, match="0 <= num_byzantine < num_agents"):
        frl.ByzPGConfig(num_agents=5, num_byzantine=5, attack="large_noise", allow_byzantine_majority=True).validate()
    frl.ByzPGConfig(num_agents=5, num_byzantine=4, attack="large_noise", allow_byzantine_majority=True).validate()
