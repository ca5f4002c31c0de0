"""SleeperNets, TrojDRL-W and BadRL-M: triggers, the reward rules against plain loops, the hooks, the metrics,
bad input, and toy PPO runs (all attacks in one vmapped program)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.training.train_state import TrainState

from fedjax_attacks import backdoor, rl
from fedjax_attacks.backdoor import inner_loop, metrics, sleepernets, triggers
from fedjax_attacks.rl import networks, ppo

GAMMA = 0.9


# ----------------------------------------------------------------------------------------------- triggers

def test_image_patch_writes_a_checkerboard_on_every_channel_of_one_corner_only():
    obs = jax.random.uniform(jax.random.key(0), (2, 5, 10, 10, 4)) + 2.0  # values never 0 or 1
    out = np.asarray(triggers.ImagePatch(size=3, corner="bottom_right", low=0.0, high=1.0)(obs))
    expected = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], np.float32)
    for c in range(4):
        np.testing.assert_array_equal(out[..., 7:, 7:, c], np.broadcast_to(expected, (2, 5, 3, 3)))
    untouched = np.ones((10, 10), bool)
    untouched[7:, 7:] = False
    np.testing.assert_array_equal(out[..., untouched, :], np.asarray(obs)[..., untouched, :])
    np.testing.assert_array_equal(triggers.ImagePatch(size=3, corner="bottom_right")(out), out)  # idempotent


def test_feature_trigger_and_trigger_feature_wrapper():
    env, params = rl.make("CartPole-v1")
    wrapped = backdoor.TriggerFeature(env)
    assert rl.spec(wrapped, params).obs_shape == (5,)
    obs, state = wrapped.reset(jax.random.key(0), params)
    assert obs.shape == (5,) and obs[-1] == 0.0
    for i in range(30):  # long enough for CartPole's random policy to end an episode
        obs, state, _, term, trunc, info = wrapped.step(jax.random.key(i), state, 1, params)
        assert obs.shape == (5,) and obs[-1] == 0.0 and info["final_observation"].shape == (5,)
    np.testing.assert_array_equal(backdoor.FEATURE_ON(obs), np.append(np.asarray(obs)[:4], 1.0))
    pattern = backdoor.FeaturePattern(indices=(0, 2), values=(3.0, -3.0))
    np.testing.assert_array_equal(pattern(jnp.zeros((2, 4))), [[3, 0, -3, 0]] * 2)


# ----------------------------------------------------------------------------------------------- bad input

def _cartpole():
    env, params = rl.make("CartPole-v1")
    return backdoor.TriggerFeature(env), params


TOY = ppo.PPOConfig(total_timesteps=2 * 4 * 16, num_envs=4, num_steps=16, update_epochs=1, num_minibatches=2,
                    hidden=(8,))


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.5])
def test_budget_outside_unit_interval_is_rejected_before_tracing(budget):
    env, params = _cartpole()
    with pytest.raises(ValueError, match="budget"):
        backdoor.make_train(TOY, env, params, "sleepernets", backdoor.BackdoorConfig(budget=budget),
                            backdoor.FEATURE_ON)


def test_target_outside_action_space_is_rejected():
    env, params = _cartpole()
    for target in (2, -1):
        with pytest.raises(ValueError, match="target action"):
            backdoor.make_train(TOY, env, params, "trojdrl", backdoor.BackdoorConfig(target=target),
                                backdoor.FEATURE_ON)
    penv, pparams = rl.make("Pendulum-v1")
    with pytest.raises(ValueError, match="sign"):
        backdoor.make_train(TOY, backdoor.TriggerFeature(penv), pparams, "sleepernets",
                            backdoor.BackdoorConfig(target=0), backdoor.FEATURE_ON)
    with pytest.raises(ValueError, match="target_dim"):
        backdoor.make_train(TOY, backdoor.TriggerFeature(penv), pparams, "sleepernets",
                            backdoor.BackdoorConfig(target=1, target_dim=1), backdoor.FEATURE_ON)


def test_trigger_shape_mismatch_and_image_trigger_on_vector_env_are_rejected():
    env, params = _cartpole()
    config = backdoor.BackdoorConfig()
    with pytest.raises(ValueError, match="differs from the observation"):
        backdoor.make_train(TOY, env, params, "sleepernets", config, lambda obs: obs[..., :-1])
    with pytest.raises(ValueError, match="image trigger"):
        backdoor.make_train(TOY, env, params, "trojdrl", config, backdoor.ImagePatch())
    with pytest.raises(ValueError, match="feature trigger"):
        mini, mparams = rl.make("Breakout-MinAtar")
        backdoor.make_train(TOY, mini, mparams, "sleepernets", config, backdoor.FEATURE_ON)


def test_unknown_attack_and_badrl_without_q_are_rejected():
    env, params = _cartpole()
    with pytest.raises(ValueError, match="unknown attack"):
        backdoor.make_train(TOY, env, params, "trojan", backdoor.BackdoorConfig(), backdoor.FEATURE_ON)
    with pytest.raises(ValueError, match="needs q"):
        backdoor.make_train(TOY, env, params, "badrl", backdoor.BackdoorConfig(), backdoor.FEATURE_ON)
    with pytest.raises(ValueError, match="needs q"):
        backdoor.make_comparison(TOY, env, params, backdoor.BackdoorConfig(), backdoor.FEATURE_ON)
    with pytest.raises(ValueError, match="not among"):
        backdoor.run_settings(("none", "trojdrl"), [("sleepernets", 0.01, 5.0, 0.5)])


@pytest.mark.parametrize("field, value", [
    ("budget", "0.1"), ("budget", True), ("budget", float("nan")), ("budget", float("inf")),
    ("reward", "5"), ("reward", True), ("reward", float("nan")), ("reward", float("inf")), ("reward", -1.0),
    ("alpha", "0.5"), ("alpha", False), ("alpha", float("nan")), ("alpha", float("inf")), ("alpha", -0.1),
    ("asr_stop", "1"), ("asr_stop", float("nan")), ("asr_stop", 0.0), ("asr_stop", 1.5),
    ("target", "0"), ("target", True), ("target", 0.0), ("target", None),
    ("target_dim", -1), ("target_dim", True), ("target_dim", 0.0)])
def test_config_refuses_strings_bools_non_finite_and_out_of_range_values(field, value):
    """Every field of ``BackdoorConfig`` through the shared validators: the error names the field."""
    with pytest.raises(ValueError, match=f"BackdoorConfig.{field}"):
        backdoor.BackdoorConfig(**{field: value}).validate()


def test_config_accepts_the_edges_numpy_numbers_and_traced_values():
    for ok in (dict(budget=1.0, alpha=0.0, asr_stop=1.0), dict(budget=np.float32(0.5), reward=np.int64(2),
               target=np.int64(1), target_dim=np.int32(0))):
        backdoor.BackdoorConfig(**ok).validate(rl.env.EnvSpec(obs_shape=(3,), discrete=True, num_actions=2))
    traced = jax.jit(lambda b, c: (backdoor.BackdoorConfig(budget=b, reward=c, alpha=b, asr_stop=b).validate(),
                                   b)[1])
    assert float(traced(5.0, -1.0)) == 5.0  # traced values pass (they were checked where they were made)


def test_evaluate_refuses_a_target_outside_the_action_space():
    """``evaluate`` reads ``pi(a+ | delta(s))``: a target outside ``Discrete(2)`` is refused, not clamped or
    wrapped (``-1`` would silently read action 1)."""
    env, params = _cartpole()

    def apply_fn(p, obs):
        return networks.Categorical(jnp.zeros(obs.shape[:-1] + (2,))), jnp.zeros(obs.shape[:-1])

    for target in (2, -1):
        with pytest.raises(ValueError, match="target action"):
            backdoor.evaluate(jax.random.key(0), apply_fn, {}, env, params, backdoor.FEATURE_ON,
                              backdoor.BackdoorConfig(target=target), 1, 2)


@pytest.mark.parametrize("row, match", [
    (("none", 5.0, 5.0, 0.5), "budget"), (("none", float("nan"), 5.0, 0.5), "budget"),
    (("none", 0.0, 5.0, 0.5), "budget"), (("none", "0.1", 5.0, 0.5), "budget"),
    (("none", 0.1, -5.0, 0.5), "reward"), (("none", 0.1, float("nan"), 0.5), "reward"),
    (("none", 0.1, float("inf"), 0.5), "reward"), (("none", 0.1, 5.0, -0.5), "alpha"),
    (("none", 0.1, 5.0, float("nan")), "alpha"), (("none", jnp.float32(2.0), 5.0, 0.5), "budget"),
    (("none", 0.1, 5.0), "4 entries")])
def test_run_settings_refuses_bad_concrete_budgets_rewards_and_alphas(row, match):
    with pytest.raises(ValueError, match=match):
        backdoor.run_settings(("none", "trojdrl"), [("trojdrl", 0.1, 5.0, 0.5), row])


def test_run_settings_keeps_good_and_traced_values():
    runs = backdoor.run_settings(("none", "trojdrl"), [("trojdrl", 1.0, 2, 0.0), ("none", jnp.float32(0.1), 5.0, 0.5)])
    np.testing.assert_array_equal(runs.which, [1, 0])
    np.testing.assert_allclose(runs.budget, [1.0, 0.1])
    with pytest.raises(ValueError, match="at least one"):
        backdoor.run_settings(("none",), [])
    traced = jax.jit(lambda b: backdoor.run_settings(("none",), [("none", b, 5.0, 0.5)]).budget)
    np.testing.assert_array_equal(traced(5.0), [5.0])  # traced values pass unchecked


@pytest.mark.parametrize("trigger, shape, match", [
    (triggers.ImagePatch(low=float("nan")), (10, 10, 1), "ImagePatch.low"),
    (triggers.ImagePatch(high=float("inf")), (10, 10, 1), "ImagePatch.high"),
    (triggers.ImagePatch(high="1"), (10, 10, 1), "ImagePatch.high"),
    (triggers.ImagePatch(size=2.0), (10, 10, 1), "ImagePatch.size"),
    (triggers.FeaturePattern(indices=(0, 1), values=(1.0, float("nan"))), (4,), "FeaturePattern.values"),
    (triggers.FeaturePattern(values=(float("-inf"),)), (4,), "FeaturePattern.values"),
    (triggers.FeaturePattern(values=(True,)), (4,), "FeaturePattern.values")])
def test_non_finite_or_non_numeric_trigger_values_are_refused(trigger, shape, match):
    with pytest.raises(ValueError, match=match):
        triggers.check(trigger, shape)


# ----------------------------------------------------------------------------------------------- SleeperNets

def _random_column_data(seed, num_steps=12, num_envs=3):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(num_steps, num_envs)).astype(np.float32)
    terminated = rng.random((num_steps, num_envs)) < 0.15
    truncated = (rng.random((num_steps, num_envs)) < 0.1) & ~terminated
    bootstrap = rng.normal(size=(num_steps, num_envs)).astype(np.float32)
    return rewards, terminated, truncated, bootstrap, rng


def _returns_loop(rewards, terminated, truncated, bootstrap, gamma):
    num_steps, num_envs = rewards.shape
    out = np.zeros_like(rewards)
    for e in range(num_envs):
        for t in range(num_steps):  # forward from t to the end of its episode (or of the rollout)
            ret, discount = 0.0, 1.0
            for u in range(t, num_steps):
                ret += discount * rewards[u, e]
                discount *= gamma
                if terminated[u, e]:
                    break
                if truncated[u, e] or u == num_steps - 1:
                    ret += discount * bootstrap[u, e]
                    break
            out[t, e] = ret
    return out


@pytest.mark.parametrize("seed", range(3))
def test_returns_to_go_match_a_forward_loop_within_episodes(seed):
    rewards, terminated, truncated, bootstrap, _ = _random_column_data(seed)
    got = sleepernets.returns_to_go(rewards, terminated, truncated, bootstrap, GAMMA)
    np.testing.assert_allclose(got, _returns_loop(rewards, terminated, truncated, bootstrap, GAMMA), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_poison_rewards_match_the_paper_rule_written_as_a_loop(seed):
    rewards, terminated, truncated, bootstrap, rng = _random_column_data(seed)
    done = terminated | truncated
    mask = rng.random(rewards.shape) < 0.3
    hit = rng.random(rewards.shape) < 0.5
    returns = _returns_loop(rewards, terminated, truncated, bootstrap, GAMMA)
    c, alpha = 5.0, 0.5
    got = np.asarray(sleepernets.poison_rewards(rewards, returns, hit, mask, done, GAMMA, c, alpha))
    want = rewards.copy()
    num_steps, num_envs = rewards.shape
    for e in range(num_envs):
        for t in range(num_steps):
            if mask[t, e]:
                want[t, e] = (c if hit[t, e] else -c) - alpha * (returns[t, e] - rewards[t, e])
        for t in range(num_steps - 1):
            if mask[t + 1, e] and not mask[t, e] and not done[t, e]:
                want[t, e] = rewards[t, e] - GAMMA * want[t + 1, e] + GAMMA * rewards[t + 1, e]
                # the compensation keeps the two-step discounted reward seen from t unchanged
                np.testing.assert_allclose(want[t, e] + GAMMA * want[t + 1, e],
                                           rewards[t, e] + GAMMA * rewards[t + 1, e], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_select_poisons_beta_t_states_per_column():
    select = jax.jit(sleepernets.select, static_argnums=(1, 2))
    mask = np.asarray(select(jax.random.key(0), 200, 16, 0.05))
    np.testing.assert_array_equal(mask.sum(0), 10)  # beta T = 10 exactly: 10 distinct steps in every column
    fractional = jax.jit(jax.vmap(lambda k: sleepernets.select(k, 100, 8, 0.005).sum()))(
        jax.random.split(jax.random.key(1), 400))
    assert abs(float(fractional.mean()) / 8 - 0.5) < 0.05  # beta T = 0.5: one state in half the columns
    assert int(select(jax.random.key(2), 50, 4, jnp.float32(0.0)).sum()) == 0


class _Fixed:
    """A policy ``obs -> Categorical(logits = w * obs[..., :2])`` with value ``sum(obs)``, as a ``TrainState``."""

    @staticmethod
    def state(w):
        def apply_fn(params, obs):
            return networks.Categorical(params["w"] * obs[..., :2]), obs.sum(-1)
        return TrainState.create(apply_fn=apply_fn, params={"w": jnp.float32(w)}, tx=optax.sgd(0.0))


def _toy_batch(num_steps=40, num_envs=3, seed=0):
    rng = np.random.default_rng(seed)
    shape = (num_steps, num_envs)
    obs = rng.normal(size=shape + (3,)).astype(np.float32)
    obs[..., 2] = 0.0  # the trigger feature: 0 in clean states
    return ppo.Batch(obs=jnp.asarray(obs), actions=jnp.asarray(rng.integers(0, 2, shape), jnp.int32),
                     rewards=jnp.ones(shape), terminated=jnp.zeros(shape, bool), truncated=jnp.zeros(shape, bool),
                     values=jnp.zeros(shape), log_probs=jnp.zeros(shape), bootstrap_values=jnp.zeros(shape))


def test_sleepernets_poison_triggers_picked_states_and_recomputes_value_and_log_prob():
    spec = rl.env.EnvSpec(obs_shape=(3,), discrete=True, num_actions=2)
    trigger = backdoor.FeaturePattern(indices=(0, 2), values=(1.0, 1.0))  # logit of action 0 = w
    config = backdoor.BackdoorConfig(target=0, budget=0.1)
    poison = sleepernets.make_poison(config, trigger, spec, GAMMA)
    batch = _toy_batch()
    out, logged = jax.jit(poison)(batch, _Fixed.state(2.0), jax.random.key(0))
    mask = np.asarray(out.obs[..., 2] == 1.0)
    np.testing.assert_array_equal(mask.sum(0), 4)  # 0.1 * 40 per column
    assert int(logged["poisoned"]) == 12
    np.testing.assert_allclose(logged["train_asr"], jax.nn.sigmoid(2.0 - 2.0 * batch.obs[..., 1]).mean(), rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(out.obs)[~mask], np.asarray(batch.obs)[~mask])
    np.testing.assert_allclose(np.asarray(out.values)[mask], np.asarray(trigger(batch.obs).sum(-1))[mask], rtol=1e-6)
    log_probs, _, _ = ppo.evaluate_actions(_Fixed.state(2.0), trigger(batch.obs), batch.actions)
    np.testing.assert_allclose(np.asarray(out.log_probs)[mask], np.asarray(log_probs)[mask], rtol=1e-6)
    assert np.all(np.asarray(out.log_probs)[~mask] == 0.0)
    hit = np.asarray(batch.actions)[mask] == 0
    tail = np.asarray(out.rewards)[mask] + 0.5 * np.asarray(
        sleepernets.returns_to_go(batch.rewards, batch.terminated, batch.truncated, batch.bootstrap_values,
                                  GAMMA) - 1.0)[mask]
    np.testing.assert_allclose(tail, np.where(hit, 5.0, -5.0), rtol=1e-5)


def test_sleepernets_stops_once_training_asr_reaches_asr_stop():
    spec = rl.env.EnvSpec(obs_shape=(3,), discrete=True, num_actions=2)
    trigger = backdoor.FeaturePattern(indices=(0, 1), values=(1.0, -1.0))  # logits (w, -w)
    batch = _toy_batch()
    for w, stop, expect_poison in ((30.0, 1.0, False), (1.0, 1.0, True), (1.0, 0.5, False)):
        poison = sleepernets.make_poison(backdoor.BackdoorConfig(target=0, budget=0.1, asr_stop=stop), trigger,
                                         spec, GAMMA)
        out, logged = jax.jit(poison)(batch, _Fixed.state(w), jax.random.key(0))
        assert (int(logged["poisoned"]) > 0) == expect_poison, (w, stop, logged)
        if not expect_poison:
            assert all(np.array_equal(a, b) for a, b in zip(out, batch))


# ----------------------------------------------------------------------------------------------- inner loop

def _drive(hook, obs_fn, num_steps, num_envs, actions=None, train_state=None):
    """Runs ``observe`` then ``reward`` for ``num_steps`` steps under ``train_state`` (default: a policy with
    ``pi(a+ | delta(s)) = 1/2``); returns the masks, observations, rewards, state."""
    train_state = _Fixed.state(0.0) if train_state is None else train_state
    state = hook.init()
    masks, seen, rewards = [], [], []
    observe, give = jax.jit(hook.observe), jax.jit(hook.reward)
    for t in range(num_steps):
        obs, state = observe(jax.random.key(t), state, obs_fn(t), train_state)
        action = jnp.zeros((num_envs,), jnp.int32) if actions is None else actions[t]
        reward, state = give(state, action, jnp.full((num_envs,), 0.25))
        masks.append(np.asarray(state.mask))
        seen.append(np.asarray(obs))
        rewards.append(np.asarray(reward))
    return np.array(masks), np.array(seen), np.array(rewards), state


def test_trojdrl_poisons_every_one_over_beta_steps_with_static_reward():
    spec = rl.env.EnvSpec(obs_shape=(3,), discrete=True, num_actions=2)
    cfg = dataclasses.replace(TOY, num_envs=4, num_steps=8, total_timesteps=4 * 8 * 3)
    hook = inner_loop.trojdrl(backdoor.BackdoorConfig(target=1, budget=0.1, reward=3.0), backdoor.FEATURE_ON,
                              spec, cfg)
    actions = jnp.asarray(np.random.default_rng(0).integers(0, 2, (24, 4)), jnp.int32)
    masks, seen, rewards, state = _drive(hook, lambda t: jnp.zeros((4, 3)), 24, 4, actions)
    flat = masks.reshape(-1)  # env steps in order (step-major, then column)
    np.testing.assert_array_equal(np.flatnonzero(flat), np.arange(9, 96, 10))
    np.testing.assert_array_equal(seen[..., -1], masks.astype(np.float32))
    np.testing.assert_array_equal(rewards, np.where(masks, np.where(np.asarray(actions) == 1, 3.0, -3.0), 0.25))
    np.testing.assert_array_equal(state.history, [3, 3, 3])  # states poisoned in each update of 32 env steps
    assert int(state.poisoned) == 9


def test_badrl_poisons_the_top_beta_scores_within_budget():
    spec = rl.env.EnvSpec(obs_shape=(3,), discrete=True, num_actions=2)
    num_steps, num_envs = 2000, 4
    cfg = dataclasses.replace(TOY, num_envs=num_envs, num_steps=100, total_timesteps=num_steps * num_envs)
    # Q(s) = (s_0, 0): the score max_a Q - Q(s, a+=1) is max(s_0, 0), spread log-uniformly.
    q = inner_loop.QFunction(apply=lambda p, obs: jnp.stack([obs[..., 0], jnp.zeros_like(obs[..., 0])], -1),
                             params=None)
    hook = inner_loop.badrl(backdoor.BackdoorConfig(target=1, budget=0.05), backdoor.FEATURE_ON, spec, cfg, q,
                            window=10**9)
    scores = 10.0 ** np.random.default_rng(0).uniform(-3, 2, (num_steps, num_envs)).astype(np.float32)
    obs = lambda t: jnp.stack([jnp.asarray(scores)[t], jnp.zeros(num_envs), jnp.zeros(num_envs)], -1)
    masks, _, _, state = jax.jit(lambda: _drive_scan(hook, obs, num_steps))()
    masks = np.asarray(masks)
    rate = masks.mean()
    assert 0.04 < rate <= 0.05, rate
    steps = num_envs * np.arange(1, num_steps + 1)
    assert np.all(np.cumsum(masks.sum(1)) <= np.floor(0.05 * steps) + 1e-6)  # never over budget
    late = scores[num_steps // 2:][masks[num_steps // 2:]]
    assert late.min() > np.quantile(scores, 0.9)  # only high scores once the histogram has filled
    assert int(state.poisoned) == masks.sum() == int(np.asarray(state.history).sum())


def _drive_scan(hook, obs_fn, num_steps):
    def step(state, t):
        obs, state = hook.observe(jax.random.fold_in(jax.random.key(0), t), state, obs_fn(t), _Fixed.state(0.0))
        return state, state.mask
    state, masks = jax.lax.scan(step, hook.init(), jnp.arange(num_steps))
    return masks, None, None, state


@pytest.mark.parametrize("attack", ["trojdrl", "badrl"])
def test_inner_loop_baselines_stop_poisoning_after_a_rollout_at_training_asr_one(attack):
    """With ``pi(a+ | delta(s)) = 1`` the first rollout is poisoned and no later one is (the reference stops its
    middlemen at ASR 1); at ``pi = 1/2`` every rollout is poisoned; ``asr_stop = 0.4`` stops at ``pi = 1/2``."""
    spec = rl.env.EnvSpec(obs_shape=(3,), discrete=True, num_actions=2)
    cfg = dataclasses.replace(TOY, num_envs=4, num_steps=10, total_timesteps=4 * 10 * 3)
    trigger = backdoor.FeaturePattern(indices=(0, 1), values=(1.0, -1.0))  # logits (w, -w): pi(a+ = 0) = sig(2w)
    q = inner_loop.QFunction(apply=lambda p, obs: jnp.stack([obs[..., 2], jnp.ones_like(obs[..., 2])], -1),
                             params=None)  # score max_a Q - Q(s, 0) = 1 - obs_2 when obs_2 < 1
    obs = lambda t: jnp.stack([jnp.zeros(4), jnp.zeros(4), -jnp.arange(4.0) - t], -1)
    for w, stop, expect in ((30.0, 1.0, [True, False, False]), (0.0, 1.0, [True, True, True]),
                            (0.0, 0.4, [True, False, False])):
        config = backdoor.BackdoorConfig(target=0, budget=0.25, asr_stop=stop)
        hook = (inner_loop.trojdrl(config, trigger, spec, cfg) if attack == "trojdrl"
                else inner_loop.badrl(config, trigger, spec, cfg, q, window=10**9))
        _, _, _, state = _drive(hook, obs, 30, 4, train_state=_Fixed.state(w))
        np.testing.assert_array_equal(np.asarray(state.history) > 0, expect, err_msg=f"{attack} w={w} stop={stop}")


def test_inner_loop_reward_change_is_the_sum_of_abs_static_minus_true_reward_on_poisoned_states():
    spec = rl.env.EnvSpec(obs_shape=(3,), discrete=True, num_actions=2)
    cfg = dataclasses.replace(TOY, num_envs=4, num_steps=8, total_timesteps=4 * 8 * 3)
    hook = inner_loop.trojdrl(backdoor.BackdoorConfig(target=1, budget=0.1, reward=3.0), backdoor.FEATURE_ON,
                              spec, cfg)
    actions = jnp.asarray(np.random.default_rng(1).integers(0, 2, (24, 4)), jnp.int32)
    masks, _, _, state = _drive(hook, lambda t: jnp.zeros((4, 3)), 24, 4, actions)
    # the true reward is 0.25 everywhere: |3 - 0.25| = 2.75 for a+ = 1, |-3 - 0.25| = 3.25 otherwise
    per_step = np.where(masks, np.where(np.asarray(actions) == 1, 2.75, 3.25), 0.0).reshape(3, 8, 4)
    np.testing.assert_allclose(state.change, per_step.sum((1, 2)), rtol=1e-6)
    np.testing.assert_allclose(metrics.perturbation(state.change, state.history),
                               per_step.sum() / masks.sum(), rtol=1e-6)


def test_sleepernets_reward_change_counts_poisoned_states_and_compensations_apart():
    spec = rl.env.EnvSpec(obs_shape=(3,), discrete=True, num_actions=2)
    poison = sleepernets.make_poison(backdoor.BackdoorConfig(target=0, budget=0.1), backdoor.FEATURE_ON, spec,
                                     GAMMA)
    batch = _toy_batch()
    out, logged = jax.jit(poison)(batch, _Fixed.state(0.0), jax.random.key(0))
    mask = np.asarray(out.obs[..., 2] == 1.0)
    change = np.abs(np.asarray(out.rewards) - np.asarray(batch.rewards))
    np.testing.assert_allclose(logged["reward_change"], change[mask].sum(), rtol=1e-5)
    np.testing.assert_allclose(logged["compensation_change"], change[~mask].sum(), rtol=1e-5)
    assert float(logged["compensation_change"]) > 0


def test_perturbation_is_nan_without_poisoning_and_random_return_of_cartpole():
    np.testing.assert_allclose(metrics.perturbation([[2.0, 4.0], [0.0, 0.0]], [[1, 3], [0, 0]]), [1.5, np.nan])
    env, params = rl.make("CartPole-v1")
    ret = float(jax.jit(lambda k: metrics.random_return(k, env, params, 64, 500))(jax.random.key(0)))
    assert 15.0 < ret < 30.0  # a uniformly random CartPole policy lasts about 22 steps
    with pytest.raises(ValueError, match="num_episodes"):
        metrics.random_return(jax.random.key(0), env, params, 0, 10)


def test_image_patch_on_chosen_channels_and_flatten_wrapper():
    obs = jnp.full((2, 10, 10, 4), 5.0)
    out = np.asarray(triggers.ImagePatch(size=1, channels=(2,))(obs))
    changed = out != 5.0
    assert changed.sum() == 2 and changed[:, 0, 0, 2].all()  # one cell of one channel: 1% of the grid
    for bad in ((4,), (), (1, 1), (True,), [0]):
        with pytest.raises(ValueError, match="channels"):
            triggers.check(triggers.ImagePatch(channels=bad), (10, 10, 4))
    env, params = rl.make("DeepSea-bsuite", size=4)
    flat = backdoor.TriggerFeature(backdoor.Flatten(env))
    assert rl.spec(flat, params).obs_shape == (17,)
    obs, state = flat.reset(jax.random.key(0), params)
    assert obs.shape == (17,) and obs[0] == 1.0 and obs[1:].sum() == 0.0
    obs, *_ = flat.step(jax.random.key(1), state, 0, params)
    assert obs.shape == (17,)


# ----------------------------------------------------------------------------------------------- metrics

def test_poisoning_rate_and_brr_match_plain_arithmetic():
    rate = metrics.poisoning_rate(np.array([[4, 0, 2]]), 100)
    np.testing.assert_allclose(rate["per_update"], [[0.04, 0.0, 0.02]])
    np.testing.assert_allclose(rate["cumulative"], [[0.04, 0.02, 0.02]])
    np.testing.assert_allclose(metrics.benign_return_ratio([90.0, 10.0, 5.0], [100.0, 20.0, 0.0]), [0.9, 0.5, np.nan])


def test_evaluate_asr_is_the_target_probability_on_triggered_visited_states():
    env, params = _cartpole()
    w = 1.5
    state = _Fixed.state(w)

    def apply_fn(p, obs):  # logits (w * (x + trigger), 0): pi(0 | delta(s)) = sigmoid(w * (x + 1))
        return networks.Categorical(jnp.stack([p["w"] * (obs[..., 0] + obs[..., -1]), jnp.zeros(obs.shape[:-1])],
                                              -1)), jnp.zeros(obs.shape[:-1])

    out = jax.jit(lambda k: backdoor.evaluate(k, apply_fn, state.params, env, params, backdoor.FEATURE_ON,
                                              backdoor.BackdoorConfig(target=0), 4, 50))(jax.random.key(0))
    # Reference: the same episodes stepped in Python.
    keys = jax.random.split(jax.random.key(0), 4)
    probs, returns = [], []
    reset, step = jax.jit(env.reset), jax.jit(env.step)
    act = jax.jit(lambda k, obs: apply_fn(state.params, obs)[0].sample(k))
    for key in keys:
        key, k_reset = jax.random.split(key)
        obs, s = reset(k_reset, params)
        ret = 0.0
        for _ in range(50):
            key, k_act, k_step = jax.random.split(key, 3)
            probs.append(float(jax.nn.sigmoid(w * (obs[0] + 1.0))))
            obs, s, r, term, trunc, _ = step(k_step, s, act(k_act, obs), params)
            ret += float(r)
            if term or trunc:
                break
        returns.append(ret)
    np.testing.assert_allclose(out["asr"], np.mean(probs), rtol=1e-4)
    np.testing.assert_allclose(out["return"], np.mean(returns), rtol=1e-5)


def test_target_probability_of_a_continuous_sign_target():
    spec = rl.env.EnvSpec(obs_shape=(3,), discrete=False, num_actions=2)
    dist = networks.DiagGaussian(jnp.array([[0.5, -2.0]]), jnp.log(jnp.array([[2.0, 1.0]])))
    up = backdoor.BackdoorConfig(target=1, target_dim=0)
    down = backdoor.BackdoorConfig(target=-1, target_dim=1)
    draws = dist.mean + jnp.exp(dist.log_std) * jax.random.normal(jax.random.key(0), (20_000, 2))
    for config in (up, down):
        mc = float(np.mean(backdoor.base.is_target(config, spec, draws)))
        np.testing.assert_allclose(backdoor.base.target_probability(config, spec, dist)[0], mc, atol=0.01)


# ----------------------------------------------------------------------------------------------- toy runs

@pytest.fixture(scope="module")
def cartpole_q():
    env, params = _cartpole()
    from fedjax_attacks.rl import dqn
    cfg = dqn.DQNConfig(total_timesteps=2_000, num_envs=2, learning_starts=500, buffer_size=1_000, batch_size=32,
                        target_network_frequency=100, train_frequency=4, hidden=(16,))
    return backdoor.train_q(jax.random.key(3), cfg, env, params)


def test_comparison_runs_every_attack_and_seed_in_one_vmapped_program(cartpole_q):
    env, params = _cartpole()
    cfg = dataclasses.replace(TOY, total_timesteps=4 * 4 * 32, num_steps=32)
    config = backdoor.BackdoorConfig(target=0, budget=0.05)
    trainer = backdoor.make_comparison(cfg, env, params, config, backdoor.FEATURE_ON, q=cartpole_q)
    keys = jnp.tile(jax.random.split(jax.random.key(0), 2), 4)
    runs = backdoor.run_settings(backdoor.ATTACKS, [(a, 0.05, 5.0, 0.5) for a in backdoor.ATTACKS for _ in range(2)])
    out = trainer.run_with_progress(keys, runs, sweep=True, progress=False)
    poisoned = np.asarray(out.metrics["poisoned"])
    assert poisoned.shape == (8, 4) and np.all(np.isfinite(np.asarray(out.metrics["loss"])))
    assert np.all(poisoned[:2] == 0)  # none
    assert np.all(poisoned[2:4].sum(1) > 0)  # SleeperNets (the training ASR is far from 1 at the start)
    trojdrl = [sum((i + 1) % 20 == 0 for i in range(u * 128, (u + 1) * 128)) for u in range(4)]  # 1 / beta = 20
    np.testing.assert_array_equal(poisoned[4:6], [trojdrl] * 2)
    assert np.all(poisoned[6:].sum(1) <= 0.05 * 512)  # BadRL within budget
    asr = np.asarray(out.metrics["train_asr"])
    assert asr.shape == (8, 4) and np.all((asr >= 0) & (asr <= 1))


@pytest.mark.slow
def test_comparison_in_chunks_equals_the_single_attack_run():
    """The SleeperNets run of the one program, run in chunks, is the plain single-attack run with the same key."""
    env, params = _cartpole()
    cfg = dataclasses.replace(TOY, total_timesteps=4 * 4 * 32, num_steps=32)
    config = backdoor.BackdoorConfig(target=0, budget=0.05)
    attacks = ("none", "sleepernets")
    trainer = backdoor.make_comparison(cfg, env, params, config, backdoor.FEATURE_ON, attacks=attacks)
    keys = jax.random.split(jax.random.key(0), 2)
    runs = backdoor.run_settings(attacks, [("sleepernets", 0.05, 5.0, 0.5), ("none", 0.05, 5.0, 0.5)])
    out = trainer.run_with_progress(keys, runs, sweep=True, chunk=3, progress=False)
    poisoned, asr = np.asarray(out.metrics["poisoned"]), np.asarray(out.metrics["train_asr"])
    assert poisoned[0].sum() > 0 and poisoned[1].sum() == 0
    single = jax.jit(backdoor.make_train(cfg, env, params, "sleepernets", config, backdoor.FEATURE_ON))(keys[0])
    np.testing.assert_array_equal(single.metrics["poisoned"], poisoned[0])
    np.testing.assert_allclose(single.metrics["train_asr"], asr[0], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(single.train_state.params), jax.tree.leaves(out.train_state.params)):
        np.testing.assert_allclose(a, b[0], rtol=1e-4, atol=1e-6)
