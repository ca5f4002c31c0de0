"""Tests added to kill the mutants of ``make mutation`` that survived the FRL algorithm tests (issue 18): the pieces
of ``frl/base.py`` (block sampling and its GPOMDP / PAGE-PG estimates, keys, counts, schedules, the aggregator)
against ``policy_gradient``'s own estimators on the same trajectories, ByzPG's and DecByzPG's refusal of a
non-finite direction, and ``frl/batch.py``'s ``make_variants`` against each variant's own runs, at toy size (a few
compiles)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from fedjax_attacks import aggregators, frl
from fedjax_attacks.frl import base
from fedjax_attacks.frl.config import Blocks
from fedjax_attacks.rl import policy_gradient as pg
from test_frl_blocks import _coins  # the coins a seed's schedule completes

# N = 5, B = 3: a large batch is 2 blocks, the last counting 2 episodes; gamma away from 1 so it shows
CFG = frl.DecByzPGConfig(num_agents=3, aggregator="mean", agreement="none", large_batch=5, small_batch=3, horizon=6,
                         hidden=(4,), gamma=0.8, learning_rate=1e-2)


def _sub(traj, count):
    return jax.tree.map(lambda x: x[:, :count], traj)


def test_block_keys_counts_schedules_and_blocks():
    k = jax.random.key(9)
    got = base.block_keys(k, 3, 2)
    want = [jax.random.fold_in(s, 2) for s in jax.random.split(k, 3)]
    for g, w in zip(got, want):
        np.testing.assert_array_equal(jax.random.key_data(g), jax.random.key_data(w))
    for N, B in ((5, 3), (6, 3), (2, 3), (7, 2)):
        config = dataclasses.replace(CFG, large_batch=N, small_batch=B)
        counts = [int(base.large_block_count(config, j)) for j in range(-(-N // B))]
        assert counts == [min(B, N - j * B) for j in range(-(-N // B))] and sum(counts) == N
    blocks = frl.block_schedule(np.array([True, False]), CFG)
    schedule = base.as_schedule(blocks)
    assert [a.dtype for a in schedule] == [jnp.bool_, jnp.int32, jnp.int32, jnp.bool_]
    one = base.current_block(schedule, 1)
    assert (bool(one.large), int(one.index), int(one.count), bool(one.last)) == (True, 1, 2, True)
    coins = base.as_schedule([True, False])
    assert coins.dtype == jnp.bool_ and coins.tolist() == [True, False]
    with pytest.raises(ValueError, match="booleans"):
        base.as_schedule([1, 0])


def test_make_aggregator_wraps_bucketing_and_one_agent():
    x = jnp.asarray([[1.0, 7.0], [2.0, 5.0], [40.0, -3.0], [3.0, 4.0], [5.0, 5.5]])
    plain = base.make_aggregator(dataclasses.replace(CFG, aggregator="median"))
    assert plain.name == aggregators.get("median").name
    np.testing.assert_allclose(np.asarray(plain(x)), np.median(np.asarray(x), axis=0))
    bucketed = base.make_aggregator(dataclasses.replace(CFG, aggregator="median", bucket_size=2))
    want = aggregators.bucketing(aggregator="median", bucket_size=2)
    np.testing.assert_allclose(np.asarray(bucketed(x, key=jax.random.key(0))),
                               np.asarray(want(x, key=jax.random.key(0))))
    assert bucketed.name == want.name != plain.name
    single = base.make_aggregator(dataclasses.replace(CFG, num_agents=1, aggregator="median"))
    assert single.name == "single agent"
    np.testing.assert_array_equal(np.asarray(single(x[:1])), np.asarray(x[0]))
    assert base.make_attack(dataclasses.replace(CFG, num_byzantine=1, attack="large_noise")).name == "large_noise"


def test_check_mesh():
    assert base.check_mesh(None, CFG) is None
    mesh = Mesh(np.array(jax.devices()[:1]), ("agents",))
    assert base.check_mesh(mesh, CFG) is mesh
    with pytest.raises(ValueError, match="agents"):
        base.check_mesh(Mesh(np.array(jax.devices()[:1]), ("seeds",)), CFG)


def test_state_is_a_pytree():
    """``State`` is a ``flax.struct`` dataclass: jit and scan carry it (its eleven fields are its leaves)."""
    fields = [jnp.full((2,), float(i)) for i in range(11)]
    state = base.State(*fields)
    assert len(jax.tree_util.tree_leaves(state)) == 11
    doubled = jax.jit(lambda s: jax.tree.map(lambda x: 2 * x, s))(state)
    assert isinstance(doubled, base.State) and float(doubled.t[0]) == 12.0


@pytest.fixture(scope="module")
def estimates():
    """``sample_blocks`` on a large block (Python and traced coin, counting 2 of 3 episodes), a small block (both
    importance weights) and a small block with RandomAction on sampler 0, with the references on the same
    trajectories, in one program."""
    env, env_params, policy = base.make_env_and_policy(CFG)
    per_step = dataclasses.replace(CFG, importance_weights="per_step")
    long = dataclasses.replace(per_step, horizon=40)  # CartPole episodes end inside it: rewards 0 after the end
    thetas = 0.5 + jax.vmap(policy.init)(jax.random.split(jax.random.key(0), 2))
    thetas_prev = thetas + 0.3 * jax.random.normal(jax.random.key(1), thetas.shape)
    keys = base.block_keys(jax.random.key(2), 2, 1)
    k_large = jax.random.key(3)
    inputs = base.BlockInputs(keys, thetas, thetas_prev, False)
    random = base.BlockInputs(keys, thetas, thetas_prev, jnp.asarray([True, False]))

    def sample(key, theta, random_actions=False, horizon=CFG.horizon):
        return pg.sample_trajectories(key, policy, theta, env, env_params, num_episodes=CFG.small_batch,
                                      horizon=horizon, random_actions=random_actions)

    @jax.jit
    def run():
        got = {
            "large_python": base.sample_blocks(inputs, Blocks(True, 1, 2, False), policy, env, env_params, CFG),
            "large_traced": base.sample_blocks(inputs, Blocks(jnp.asarray(True), jnp.asarray(1), jnp.asarray(2),
                                                              jnp.asarray(False)), policy, env, env_params, CFG),
            "small": base.sample_blocks(inputs, Blocks(jnp.asarray(False), 0, jnp.asarray(3), True), policy, env,
                                        env_params, CFG),
            "per_step": base.sample_blocks(inputs, Blocks(jnp.asarray(False), 0, 3, True), policy, env, env_params,
                                           per_step),
            "per_step_ended": base.sample_blocks(inputs, Blocks(jnp.asarray(False), 0, 3, True), policy, env,
                                                 env_params, long),
            "random": base.sample_blocks(random, Blocks(jnp.asarray(False), 0, 3, True), policy, env, env_params,
                                         CFG),
            "whole_large": base.sample_large_batch(
                lambda block: base.BlockInputs(base.block_keys(k_large, 2, block.index), thetas, thetas_prev, False),
                policy, env, env_params, CFG),
        }
        def reference(key, k_i, theta, theta_prev, random_flag):  # one sampler; vmapped: fewer rollouts to compile
            traj = sample(key, theta)
            large = _sub(traj, 2)
            g_large = (pg.gpomdp(policy, theta, large, CFG.gamma) * 2 / CFG.large_batch, jnp.sum(large.rewards))
            randomly = sample(key, theta, random_actions=random_flag)
            ended = sample(key, theta, horizon=long.horizon)
            # the N episodes of a large batch: the first N of the blocks' fold_in(k_i, j)
            blocks = jax.vmap(lambda j: sample(jax.random.fold_in(k_i, j), theta))(jnp.arange(2))
            whole = jax.tree.map(lambda x: jnp.concatenate([x[0], x[1]], axis=1)[:, :CFG.large_batch], blocks)
            return {"large_python": g_large, "large_traced": g_large,
                    "small": (pg.page_pg_estimate(policy, theta, theta_prev, 0.0, traj, CFG.gamma),
                              jnp.sum(traj.rewards)),
                    "per_step": (pg.page_pg_estimate(policy, theta, theta_prev, 0.0, traj, CFG.gamma, "per_step"),
                                 jnp.sum(traj.rewards)),
                    "per_step_ended": (pg.page_pg_estimate(policy, theta, theta_prev, 0.0, ended, CFG.gamma,
                                                           "per_step"), jnp.sum(ended.rewards)),
                    "random": (pg.page_pg_estimate(policy, theta, theta_prev, 0.0, randomly, CFG.gamma),
                               jnp.sum(randomly.rewards)),
                    "whole_large": (pg.gpomdp(policy, theta, whole, CFG.gamma), jnp.sum(whole.rewards))}

        return got, jax.vmap(reference)(keys, jax.random.split(k_large, 2), thetas, thetas_prev,
                                        jnp.asarray([True, False]))

    # the estimators' algebra is under test, not a TF32 device's rounding (~1e-3 relative, differently on each side)
    with jax.default_matmul_precision("highest"):
        return run()


@pytest.mark.parametrize("name", ["large_python", "large_traced", "small", "per_step", "per_step_ended", "random",
                                  "whole_large"])
def test_sample_blocks_match_gpomdp_and_page_pg(estimates, name):
    """A large block is ``1/N`` times the GPOMDP sum over its ``count`` episodes; a small block is PAGE-PG's
    correction ``g_B(theta) - g_B^w(theta_prev)`` (``page_pg_estimate`` with ``v = 0``); a whole large batch is
    GPOMDP on the first ``N`` episodes of its blocks. ``per_step_ended``: episodes that end inside the horizon (the
    rewards after the end are 0)."""
    got, want = estimates
    (g, r), (g_want, r_want) = got[name], want[name]
    assert g.shape == g_want.shape == (2, frl.base.make_env_and_policy(CFG)[2].num_params)
    assert float(jnp.abs(g_want).max()) > 1e-2  # a real gradient, not 0 = 0
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_want), rtol=2e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(r), np.asarray(r_want), rtol=1e-6)
    if name == "per_step_ended":
        assert float(r.max()) < 40 * CFG.small_batch  # some episode ended before the horizon


def test_estimates_differ_between_the_variants(estimates):
    """The variants above are distinguishable (so the matches are not vacuous): counts, weights, random actions."""
    got, _ = estimates
    for a, b in (("small", "per_step"), ("small", "random")):
        assert not np.allclose(np.asarray(got[a][0][0]), np.asarray(got[b][0][0]), rtol=1e-3)


def test_make_byzpg_takes_a_plain_config_by_keyword():
    """ByzPG is built from a ``ByzPGConfig`` (no agreement fields, so no ``aggregate_every_iteration``), passed by
    keyword as well as by position; only the environment and policy are built (nothing is traced)."""
    plain = frl.ByzPGConfig(num_agents=2, aggregator="mean", large_batch=4, small_batch=2, horizon=10, hidden=(4,))
    assert not hasattr(plain, "aggregate_every_iteration")
    alg = frl.make_byzpg(config=plain)
    assert alg.policy.num_params == frl.make_byzpg(plain).policy.num_params > 0


def test_make_decbyzpg_takes_the_mesh_by_keyword_and_steps_on_coins_or_blocks():
    """``make_decbyzpg``'s ``mesh`` is keyword-only; ``alg.step`` takes one iteration of a state on coins and one
    block of a state on ``Blocks`` (``jax.eval_shape``: traced, not compiled)."""
    with pytest.raises(TypeError):
        frl.make_decbyzpg(CFG, None, None, None)
    alg = frl.make_decbyzpg(CFG)
    coins = np.array([True, False])
    for schedule in (coins, frl.block_schedule(coins, CFG)):
        state = alg.init(jax.random.key(0), schedule)
        stepped, history = jax.eval_shape(alg.step, state)
        assert stepped.theta.shape == state.theta.shape and history["returns"].shape == ()


def test_two_agents_agree_after_their_own_small_batch_steps():
    """K = 2 (the smallest K with an agreement step), no Byzantine agent, MDA: after a small-batch iteration the
    agents' own PAGE-PG estimates ``v`` differ, yet Avg-Agree leaves them at one point (diameter 0)."""
    alg = frl.make_decbyzpg(dataclasses.replace(CFG, num_agents=2, agreement="mda"))
    final, history = jax.jit(alg.run)(jax.random.key(3), np.array([True, False]))
    assert not np.allclose(np.asarray(final.v[0]), np.asarray(final.v[1]))
    np.testing.assert_array_equal(np.asarray(final.theta[0]), np.asarray(final.theta[1]))
    np.testing.assert_array_equal(np.asarray(history["diameter"]), 0.0)


@pytest.mark.parametrize("make", [frl.make_byzpg, frl.make_decbyzpg])
def test_overflowing_and_nan_directions_are_refused(make):
    """The one Byzantine sender sends entries of 1e30 (finite, but the averaged direction's squared norm overflows
    float32), then NaN: both directions are refused, so theta, v and Adam's state stay where they started, and
    ``skipped`` counts each iteration (every honest agent of DecByzPG, the server of ByzPG). The loop references
    in ``tests/test_frl.py`` check that finite directions are stepped along with ``skipped = 0``."""
    from fedjax_attacks import attacks
    attacks.register("test_overflow_then_nan", lambda: attacks.Attack("test_overflow_then_nan", lambda key, inp: (
        jnp.full_like(inp.updates, jnp.where(inp.round == 0, 1e30, jnp.nan)))), overwrite=True)
    alg = make(dataclasses.replace(CFG, num_byzantine=1, attack="test_overflow_then_nan"))
    coins = np.ones(2, bool)
    state = alg.init(jax.random.key(0), coins)
    final, history = jax.jit(alg.iterate)(state, coins)
    honest = 2 if make is frl.make_decbyzpg else 1
    np.testing.assert_array_equal(np.asarray(history["skipped"]), [honest, honest])
    for got, start in ((final.theta, state.theta), (final.v, state.v), (final.opt_state, state.opt_state)):
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), got, start)


def test_variants_take_mesh_and_steps_by_keyword_and_trace_on_one_device_meshes():
    """``make_variants``' ``mesh`` and ``steps`` are keyword-only; ``"iterations"`` over a seeds x agents mesh is
    refused, and so are 3 seeds over a seeds axis of 2 (by either kind of steps); without a mesh and on one-device
    meshes (seeds only; seeds x agents) both kinds of steps trace (``jax.eval_shape``, so nothing compiles) to one
    state per seed. The forced-device tests of
    ``tests/test_frl_sharding.py`` (slow) check the sharded values."""
    from fedjax_attacks.frl import batch
    device = np.array(jax.devices()[:1])
    seeds, grid = Mesh(device, ("seeds",)), Mesh(device.reshape(1, 1), ("seeds", "agents"))
    with pytest.raises(TypeError):
        batch.make_variants({"a": CFG}, "dec", None, None, seeds)
    with pytest.raises(ValueError, match="blocks"):
        batch.make_variants({"a": CFG}, "dec", mesh=grid, steps="iterations")
    doubled = Mesh(np.array([device[0], device[0]]), ("seeds",))  # a seeds axis of 2 (its size is all that is read)
    three = jax.random.split(jax.random.PRNGKey(0), 3)  # raw keys, shape [3, 2]: the seeds axis comes first
    for steps in ("iterations", "blocks"):
        schedules = frl.sample_block_schedules(jax.random.key(1), CFG, 8, num_seeds=3,
                                               whole_iterations=steps == "iterations")
        with pytest.raises(ValueError, match="number of seeds S"):
            batch.make_variants({"a": CFG}, "dec", mesh=doubled, steps=steps).init(three, schedules)
    keys = jax.random.split(jax.random.key(0), 2)
    for mesh, steps in ((None, "blocks"), (seeds, "iterations"), (seeds, "blocks"), (grid, "blocks")):
        schedules = frl.sample_block_schedules(jax.random.key(1), CFG, 8, num_seeds=2,
                                               whole_iterations=steps == "iterations")
        variants = batch.make_variants({"a": CFG}, "dec", mesh=mesh, steps=steps)
        states = jax.eval_shape(variants.init, keys, schedules)
        final, history = jax.eval_shape(variants.iterate, states, schedules)
        assert final[0].theta.shape == (2, CFG.num_agents, states[0].theta.shape[-1])
        assert history[0]["returns"].shape == schedules.large.shape


def test_variants_greedy_scores_byzpg_s_server():
    """ByzPG's variants score the server's policy greedily, even with a fixed Byzantine worker (only DecByzPG's
    fixed Byzantine agents are left out): at the initial states, ``greedy`` is ``base.greedy_returns`` of each
    seed's server theta."""
    from fedjax_attacks.frl import batch
    config = dataclasses.replace(CFG, num_byzantine=1, attack="large_noise", horizon=30)
    schedules = frl.sample_block_schedules(jax.random.key(1), config, 4, num_seeds=2, whole_iterations=True)
    variants = batch.make_variants({"a": config}, "byz")
    states = variants.init(jax.random.split(jax.random.key(0), 2), schedules)
    greedy = jax.jit(variants.greedy, static_argnums=2)(jax.random.key(2), states, 1)
    env, env_params, policy = base.make_env_and_policy(config)
    for seed, key in enumerate(jax.random.split(jax.random.key(2), 2)):
        want = base.greedy_returns(key, policy, states[0].theta[seed][None], env, env_params, config, 1)
        np.testing.assert_allclose(float(greedy[0, seed]), float(want[0]), rtol=1e-6)


@pytest.mark.parametrize("algorithm", ["dec", pytest.param("byz", marks=pytest.mark.slow)])
def test_variants_by_iterations_equal_each_run_on_its_seeds_coins(algorithm):
    """``batch.make_variants`` at toy size on this CPU's default steps (``"iterations"``): two variants (plain
    averaging; the median against a LargeNoise sender that also acts at random, not redrawn) x two seeds with their
    own coins, as one program, end where each variant's run on each seed's coins ends, with the same per-iteration
    returns; ``greedy`` scores each variant's honest agents (DecByzPG skips the fixed Byzantine agent 0 and scores
    every agent where the Byzantine set is redrawn, ByzPG scores the server) as ``base.greedy_returns`` does.
    Without agreement the agents differ, and so do their greedy returns (horizon 30). The slow
    ``tests/test_frl_blocks.py`` checks the same at a larger size and by blocks."""
    from fedjax_attacks.frl import batch
    small = dataclasses.replace(CFG, large_batch=4, small_batch=2, horizon=30, switch_prob=0.5)
    configs = {"mean": dataclasses.replace(small, resample_byzantine=True), "attacked": dataclasses.replace(
        small, num_byzantine=1, attack="large_noise", random_actions=True, aggregator="median")}
    schedules = frl.sample_block_schedules(jax.random.key(1), small, 8, num_seeds=2, whole_iterations=True)
    assert not np.array_equal(schedules.large[0], schedules.large[1])
    keys = jax.random.split(jax.random.key(0), 2)
    variants = batch.make_variants(configs, algorithm)
    assert variants.steps == "iterations" and variants.labels == ("mean", "attacked")
    final, histories = jax.jit(variants.iterate)(jax.jit(variants.init)(keys, schedules), schedules)
    greedy = jax.jit(variants.greedy, static_argnums=2)(jax.random.key(2), final, 1)
    assert greedy.shape == (2, 2)
    make = frl.make_decbyzpg if algorithm == "dec" else frl.make_byzpg
    env, env_params, policy = base.make_env_and_policy(small)
    greedy_keys = jax.random.split(jax.random.key(2), 2)
    for v, (config, state, history) in enumerate(zip(configs.values(), final, histories)):
        run = jax.jit(make(config).run)
        for seed in range(2):
            expected, expected_history = run(keys[seed], _coins(schedules, seed))
            np.testing.assert_allclose(np.asarray(state.theta[seed]), np.asarray(expected.theta), rtol=1e-5,
                                       atol=1e-6)
            assert int(state.t[seed]) == int(expected.t) == int(np.sum(schedules.last[seed]))
            done = int(expected.t)
            np.testing.assert_allclose(np.asarray(history["returns"][seed][:done]),
                                       np.asarray(expected_history["returns"]), rtol=1e-5)
            honest = state.theta[seed].reshape(-1, policy.num_params)[1 if algorithm == "dec" and v else 0:]
            want = base.greedy_returns(greedy_keys[seed], policy, honest, env, env_params, config, 1)
            np.testing.assert_allclose(float(greedy[v, seed]), float(jnp.mean(want)), rtol=1e-6)
