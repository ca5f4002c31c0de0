"""Unit tests of the RL building blocks against plain NumPy / Python-loop references."""

import dataclasses as dc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.environments import environment, spaces
from hypothesis import given, settings
from hypothesis import strategies as st

from fedjax_attacks import rl
from fedjax_attacks.rl import dqn, gae, networks, ppo, replay, td3, wrappers

# ---------------------------------------------------------------- environments and wrappers

def test_make_gymnax_spec():
    env, params = rl.make("CartPole-v1")
    s = rl.spec(env, params)
    assert s.discrete and s.num_actions == 2 and s.obs_shape == (4,)
    env, params = rl.make("Pendulum-v1")
    s = rl.spec(env, params)
    assert not s.discrete and s.num_actions == 1
    np.testing.assert_allclose(s.action_low, [-2.0])
    np.testing.assert_allclose(s.action_high, [2.0])
    with pytest.raises(ValueError, match="unknown environment"):
        rl.make("NoSuchEnv-v0")


@pytest.mark.slow  # brax compiles for ~15 s; test_policy_gradient steps brax through the same adapter
def test_brax_adapter_steps():
    env, params = rl.make("brax:inverted_pendulum", episode_length=3)
    s = rl.spec(env, params)
    assert not s.discrete and s.num_actions == 1

    def step(state, key):
        _, state, reward, _, truncated, _ = env.step(key, state, jnp.zeros(1), params)
        return state, (state.time, reward, truncated)

    @jax.jit
    def rollout(key):  # one compiled program: reset, then 4 steps through the time limit
        obs, state = env.reset(key, params)
        _, (times, rewards, truncated) = jax.lax.scan(step, state, jax.random.split(key, 4))
        return obs, times, rewards, truncated

    obs, times, rewards, truncated = rollout(jax.random.key(0))
    assert obs.shape == s.obs_shape and np.all(np.isfinite(rewards))
    np.testing.assert_array_equal(truncated, [False, False, True, False])  # time limit 3, then auto-reset
    np.testing.assert_array_equal(times, [1, 2, 0, 1])


def test_step_without_reset_matches_step_until_the_episode_ends():
    env, params = rl.make("CartPole-v1")
    params = params.replace(max_steps_in_episode=3)
    obs, state = env.reset(jax.random.key(0), params)
    for t in range(3):
        key = jax.random.key(t + 1)
        obs_a, state_a, reward_a, term_a, trunc_a, info = env.step(key, state, 1, params)
        obs_b, state_b, reward_b, term_b, trunc_b = rl.env.step_without_reset(env, key, state, 1, params)
        np.testing.assert_allclose(obs_b, info["final_observation"])
        assert (float(reward_a), bool(term_a), bool(trunc_a)) == (float(reward_b), bool(term_b), bool(trunc_b))
        if t < 2:  # inside the episode both agree; at the time limit only env.step resets
            np.testing.assert_allclose(obs_a, obs_b)
        state = state_b
    assert bool(trunc_b) and int(state_b.time) == 3 and int(state_a.time) == 0


def test_vec_env_matches_loop():
    env, params = rl.make("CartPole-v1")
    venv = wrappers.VecEnv(env, 3)
    obs, state = venv.reset(jax.random.key(0), params)
    keys = jax.random.split(jax.random.key(0), 3)
    for i in range(3):
        o, _ = env.reset(keys[i], params)
        np.testing.assert_allclose(obs[i], o)
    action = jnp.array([0, 1, 1])
    obs2, _, reward, *_ = venv.step(jax.random.key(1), state, action, params)
    keys = jax.random.split(jax.random.key(1), 3)
    for i in range(3):
        s_i = jax.tree.map(lambda x: x[i], state)
        o, _, r, *_ = env.step(keys[i], s_i, action[i], params)
        np.testing.assert_allclose(obs2[i], o, rtol=1e-6)
        assert float(reward[i]) == float(r)


def test_log_wrapper_tracks_returns():
    env, params = rl.make("CartPole-v1")
    lenv = wrappers.LogWrapper(env)
    obs, state = lenv.reset(jax.random.key(0), params)
    step = jax.jit(lenv.step)
    total, lengths = 0.0, []
    for i in range(200):
        obs, state, reward, terminated, truncated, info = step(jax.random.key(i), state, jnp.int32(i % 2), params)
        total += float(reward)
        if bool(info["returned_episode"]):
            assert float(info["returned_episode_returns"]) == total
            lengths.append(int(info["returned_episode_lengths"]))
            total = 0.0
    assert lengths and sum(lengths) <= 200


@settings(max_examples=20, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=2, max_size=4), st.integers(0, 1000))
def test_running_moments_match_numpy(sizes, seed):
    rng = np.random.default_rng(seed)
    batches = [rng.normal(3.0, 2.0, size=(n, 3)).astype(np.float32) for n in sizes]
    first = batches[0]  # exact moments of the first batch, then merge the others one by one
    m = wrappers.RunningMoments(jnp.asarray(first.mean(0)), jnp.asarray(first.var(0)), jnp.asarray(len(first) * 1.0))
    for b in batches[1:]:
        m = m.update(jnp.asarray(b))
    allx = np.concatenate(batches)
    np.testing.assert_allclose(m.mean, allx.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m.var, allx.var(0), rtol=1e-4, atol=1e-5)


def test_normalize_observation_wrapper():
    env, params = rl.make("CartPole-v1")
    nenv = wrappers.NormalizeObservation(wrappers.VecEnv(env, 8))
    obs, state = nenv.reset(jax.random.key(0), params)
    for i in range(20):
        obs, state, *_ = nenv.step(jax.random.key(i), state, jnp.zeros(8, jnp.int32), params)
    assert float(state.moments.count) == pytest.approx(8 * 21 + 1e-4)
    assert np.all(np.abs(np.asarray(obs)) <= 10.0)


# ---------------------------------------------------------------- GAE and n-step targets

def _gae_reference(r, v, bv, term, trunc, gamma, lam):
    T = len(r)
    adv = np.zeros_like(r)
    last = np.zeros_like(r[0])
    for t in reversed(range(T)):
        done = term[t] | trunc[t]
        nv = np.where(done | (t == T - 1), bv[t], v[min(t + 1, T - 1)])
        delta = r[t] + gamma * (1 - term[t]) * nv - v[t]
        last = delta + gamma * lam * (1 - done) * last
        adv[t] = last
    return adv, adv + v


def _nstep_reference(r, bv, term, trunc, gamma, n):
    T, N = r.shape
    out = np.zeros_like(r)
    for e in range(N):
        for t in range(T):
            g, disc = 0.0, 1.0
            for k in range(n):
                i = t + k
                g += disc * r[i, e]
                disc *= gamma
                if term[i, e]:
                    break
                if trunc[i, e] or k == n - 1 or i == T - 1:
                    g += disc * bv[i, e]
                    break
            out[t, e] = g
    return out


def _random_rollout(seed, T=12, N=3):
    rng = np.random.default_rng(seed)
    r = rng.normal(size=(T, N)).astype(np.float32)
    v = rng.normal(size=(T, N)).astype(np.float32)
    bv = rng.normal(size=(T, N)).astype(np.float32)
    term = rng.random((T, N)) < 0.15
    trunc = (rng.random((T, N)) < 0.15) & ~term
    return r, v, bv, term, trunc


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_loop(seed):
    r, v, bv, term, trunc = _random_rollout(seed)
    adv, tgt = gae.gae(r, v, bv, term, trunc, 0.97, 0.9)
    ref_adv, ref_tgt = _gae_reference(r, v, bv, term, trunc, 0.97, 0.9)
    np.testing.assert_allclose(adv, ref_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tgt, ref_tgt, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [1, 3, 20])
def test_n_step_targets_match_loop(n):
    r, _, bv, term, trunc = _random_rollout(n)
    got = gae.n_step_targets(r, bv, term, trunc, 0.9, n)
    np.testing.assert_allclose(got, _nstep_reference(r, bv, term, trunc, 0.9, n), rtol=1e-5, atol=1e-5)


def test_gae_lambda_one_is_n_step_return():
    """With lambda = 1 and no episode end, advantage + value is the full discounted return with bootstrap."""
    r, v, bv, _, _ = _random_rollout(5)
    no = np.zeros_like(r, bool)
    _, tgt = gae.gae(r, v, bv, no, no, 0.9, 1.0)
    np.testing.assert_allclose(tgt, gae.n_step_targets(r, bv, no, no, 0.9, len(r)), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- distributions, losses, replay

def test_distributions_match_formulas():
    logits = jnp.array([[0.1, -1.0, 2.0]])
    cat = networks.Categorical(logits)
    p = np.exp(logits[0]) / np.exp(logits[0]).sum()
    np.testing.assert_allclose(cat.log_prob(jnp.array([2])), np.log(p[2]), rtol=1e-5)
    np.testing.assert_allclose(cat.entropy(), -(p * np.log(p)).sum(), rtol=1e-5)
    g = networks.DiagGaussian(jnp.array([[0.5, -1.0]]), jnp.log(jnp.array([[2.0, 0.5]])))
    a = np.array([1.0, 0.0])
    ref = sum(-0.5 * ((a[i] - m) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)
              for i, (m, s) in enumerate([(0.5, 2.0), (-1.0, 0.5)]))
    np.testing.assert_allclose(g.log_prob(jnp.asarray(a)[None]), [ref], rtol=1e-5)
    np.testing.assert_allclose(g.entropy(), [np.sum(0.5 * np.log(2 * np.pi * np.e * np.array([4.0, 0.25])))],
                               rtol=1e-5)
    np.testing.assert_allclose(networks.scale_action(jnp.array([-1.0, 0.0, 3.0]), jnp.array([0.0, 2.0, -5.0]),
                                                     jnp.array([1.0, 6.0, 5.0])), [0.0, 4.0, 5.0])


def test_ppo_loss_hand_computed():
    logits = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    new_values = jnp.array([1.0, 0.0, -1.0])
    apply_fn = lambda params, obs: (networks.Categorical(logits * params), new_values * params)
    batch = ppo.Batch(obs=jnp.zeros((3, 1)), actions=jnp.array([0, 0, 1]), rewards=None, terminated=None,
                      truncated=None, values=jnp.array([0.5, 0.5, 0.5]),
                      log_probs=jnp.log(jnp.array([0.4, 0.9, 0.5])), bootstrap_values=None)
    adv, tgt = jnp.array([1.0, -2.0, 0.5]), jnp.array([2.0, 0.0, 0.0])
    eps = 0.2
    total, aux = ppo.loss(1.0, apply_fn, batch, adv, tgt, clip_eps=eps, vf_coef=0.5, ent_coef=0.01,
                          normalize_advantages=False)
    p = np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(1, keepdims=True)
    ratio = p[[0, 1, 2], [0, 0, 1]] / np.array([0.4, 0.9, 0.5])
    a = np.asarray(adv)
    pl = -np.mean(np.minimum(ratio * a, np.clip(ratio, 1 - eps, 1 + eps) * a))
    v, vold, t = np.asarray(new_values), 0.5, np.asarray(tgt)
    vl = 0.5 * np.mean(np.maximum((v - t) ** 2, (vold + np.clip(v - vold, -eps, eps) - t) ** 2))
    ent = np.mean(-(p * np.log(p)).sum(1))
    np.testing.assert_allclose(aux["policy_loss"], pl, rtol=1e-5)
    np.testing.assert_allclose(aux["value_loss"], vl, rtol=1e-5)
    np.testing.assert_allclose(total, pl + 0.5 * vl - 0.01 * ent, rtol=1e-5)


def test_td3_targets_and_losses_hand_computed():
    actor_fn = lambda params, obs: jnp.tanh(params * obs)
    critic_fn = lambda params, obs, act: jnp.stack([jnp.sum(obs + act, -1), params * jnp.sum(obs * act, -1)])
    obs = jnp.array([[0.5], [-1.0]])
    batch = td3.Transition(obs=obs, action=jnp.array([[0.2], [-0.4]]), reward=jnp.array([1.0, -1.0]),
                           next_obs=jnp.array([[1.0], [2.0]]), terminated=jnp.array([False, True]))
    key = jax.random.key(3)
    y = td3.td_targets(key, actor_fn, critic_fn, 2.0, 3.0, batch, gamma=0.9, policy_noise=0.2, noise_clip=0.1)
    noise = np.clip(0.2 * np.asarray(jax.random.normal(key, (2, 1))), -0.1, 0.1)
    na = np.clip(np.tanh(2.0 * np.array([[1.0], [2.0]])) + noise, -1, 1)
    nq = np.minimum((np.array([[1.0], [2.0]]) + na)[:, 0], 3.0 * (np.array([[1.0], [2.0]]) * na)[:, 0])
    np.testing.assert_allclose(y, np.array([1.0, -1.0]) + 0.9 * np.array([1.0, 0.0]) * nq, rtol=1e-5)
    q1 = np.array([0.7, -1.4])
    q2 = 1.5 * np.array([0.1, 0.4])
    ref = np.mean((q1 - np.asarray(y)) ** 2) + np.mean((q2 - np.asarray(y)) ** 2)
    np.testing.assert_allclose(td3.critic_loss(1.5, critic_fn, batch, y), ref, rtol=1e-5)
    ref_actor = -np.mean((np.asarray(obs) + np.tanh(2.0 * np.asarray(obs)))[:, 0])
    np.testing.assert_allclose(td3.actor_loss(2.0, actor_fn, critic_fn, 1.0, obs), ref_actor, rtol=1e-5)


@pytest.mark.parametrize("double_q", [True, False])
def test_dqn_td_loss_hand_computed(double_q):
    table = {0: np.array([[1.0, 2.0], [0.0, -1.0]]), 1: np.array([[3.0, 0.5], [1.0, 4.0]])}
    q_fn = lambda params, obs: jnp.asarray(table[int(obs[0, 0])]) * params
    batch = dqn.Transition(obs=jnp.zeros((2, 1)), action=jnp.array([1, 0]), reward=jnp.array([0.5, 1.0]),
                           next_obs=jnp.ones((2, 1)), terminated=jnp.array([False, False]))
    got = dqn.td_loss(1.0, 2.0, q_fn, batch, gamma=0.5, double_q=double_q)
    online_next, target_next = table[1], 2.0 * table[1]
    best = (online_next if double_q else target_next).argmax(1)
    y = np.array([0.5, 1.0]) + 0.5 * target_next[[0, 1], best]
    q = table[0][[0, 1], [1, 0]]
    np.testing.assert_allclose(got, np.mean((q - y) ** 2), rtol=1e-6)


def test_replay_ring_buffer_matches_list():
    buf = replay.init(5, {"x": jnp.zeros(2), "a": jnp.zeros((), jnp.int32)})
    ref = []
    for i in range(4):
        items = {"x": jnp.full((3, 2), float(i)) + jnp.arange(3.0)[:, None], "a": jnp.arange(3) + 10 * i}
        buf = replay.add(buf, items)
        for j in range(3):
            ref.append((np.asarray(items["x"][j]), int(items["a"][j])))
        ref = ref[-5:]
    assert int(buf.size) == 5 and int(buf.position) == 12 % 5
    stored = sorted(int(a) for a in np.asarray(buf.data["a"]))
    assert stored == sorted(a for _, a in ref)
    sample = replay.sample(jax.random.key(0), buf, 64)
    assert set(np.asarray(sample["a"]).tolist()) <= set(stored)
    with pytest.raises(ValueError):
        replay.add(buf, {"x": jnp.zeros((6, 2)), "a": jnp.zeros(6, jnp.int32)})


def test_config_validation():
    env, params = rl.make("CartPole-v1")
    with pytest.raises(ValueError, match="num_minibatches"):
        ppo.make_train(ppo.PPOConfig(num_envs=3, num_steps=5, num_minibatches=4), env, params)
    with pytest.raises(ValueError, match="less than one batch"):
        ppo.make_train(ppo.PPOConfig(total_timesteps=10), env, params)
    with pytest.raises(ValueError, match="continuous"):
        td3.make_train(td3.TD3Config(), env, params)
    penv, pparams = rl.make("Pendulum-v1")
    with pytest.raises(ValueError, match="discrete"):
        dqn.make_train(dqn.DQNConfig(), penv, pparams)
    with pytest.raises(ValueError, match="activation"):
        ppo.make_train(ppo.PPOConfig(activation="gelu"), env, params)


def test_evaluate_and_export(tmp_path):
    env, params = rl.make("CartPole-v1")
    always_left = lambda key, obs: jnp.int32(0)
    returns = jax.jit(lambda k: rl.evaluate_policy(k, always_left, env, params, 4, 50))(jax.random.key(0))
    assert returns.shape == (4,)
    # Reference: step one episode in Python.
    keys = jax.random.split(jax.random.key(0), 4)
    k, k_reset = jax.random.split(keys[0])
    obs, state = env.reset(k_reset, params)
    total = 0.0
    for _ in range(50):
        k, _, k_step = jax.random.split(k, 3)
        obs, state, r, term, trunc, _ = env.step(k_step, state, 0, params)
        total += float(r)
        if bool(term | trunc):
            break
    assert float(returns[0]) == total
    tree = {"w": jnp.arange(3.0), "b": {"c": jnp.ones((2, 2))}}
    path = str(tmp_path / "p.msgpack")
    rl.export_params(path, tree)
    back = rl.import_params(path, jax.tree.map(jnp.zeros_like, tree))
    jax.tree.map(np.testing.assert_array_equal, back, tree)


class _TargetBandit(environment.Environment):
    """One-step continuous bandit with bounds [2, 6] x [-1, 0]: reward -||a - (5, -0.8)||^2."""

    @property
    def default_params(self):
        return environment.EnvParams(max_steps_in_episode=1)

    def reset_env(self, key, params):
        return jnp.ones(2), environment.EnvState(time=0)

    def step_env(self, key, state, action, params):
        reward = -jnp.sum(jnp.square(action - jnp.array([5.0, -0.8])))
        return jnp.ones(2), environment.EnvState(time=1), reward, jnp.array(True), {}

    def action_space(self, params):
        return spaces.Box(jnp.array([2.0, -1.0]), jnp.array([6.0, 0.0]), (2,))

    def observation_space(self, params):
        return spaces.Box(-1.0, 1.0, (2,))


def test_td3_custom_env_with_arbitrary_bounds():
    """TD3 on a project-style simulator env with an asymmetric Box learns the optimal in-bounds action."""
    env = _TargetBandit()
    params = env.default_params
    cfg = td3.TD3Config(total_timesteps=1500, learning_starts=200, hidden=(32,), batch_size=32,
                        learning_rate=3e-3, tau=0.05)
    out = jax.jit(td3.make_train(cfg, env, params))(jax.random.key(0))
    action = td3.make_policy(cfg, env, params, out.learner.actor.params)(None, jnp.ones(2))
    assert np.all(action >= np.array([2.0, -1.0])) and np.all(action <= np.array([6.0, 0.0]))
    np.testing.assert_allclose(action, [5.0, -0.8], atol=0.3)


@pytest.mark.parametrize("changes,match", [({"batch_size": 0}, "batch_size must be an integer >= 1"),
                                           ({"total_timesteps": 1, "num_envs": 4}, "total_timesteps"),
                                           ({"buffer_size": 2, "num_envs": 4}, "buffer_size")])
def test_off_policy_configs_share_validation(changes, match):
    import dataclasses as dc

    from fedjax_attacks.rl import dqn, td3

    for config in (dqn.DQNConfig(), td3.TD3Config()):
        with pytest.raises(ValueError, match=match):
            dc.replace(config, **changes).validate()

# ----------------------------------------------------------------------------------------------------
# Strengthened: tests that fail on plausible wrong RL building blocks
# RL plumbing checked exactly (issue 18): NormalizeObservation and normalize against NumPy moments, LogWrapper
# episode lengths against a step counter, the replay buffer's sampling distribution over many draws, dqn.epsilon
# and PPO with observation normalization.


CARTPOLE = rl.make("CartPole-v1")


def test_normalize_observation_matches_numpy_moments():
    """The wrapper's moments are those of all raw observations so far plus the prior (mean 0, var 1, weight
    1e-4), and it returns clip((obs - mean) / sqrt(var + 1e-8), +-10); raw observations come from the same
    environment stepped with the same keys."""
    env, params = CARTPOLE
    raw_env = wrappers.VecEnv(env, 4)
    norm_env = wrappers.NormalizeObservation(raw_env, clip=2.0)  # a small clip so clipping happens
    obs, state = norm_env.reset(jax.random.key(0), params)
    raw, raw_state = raw_env.reset(jax.random.key(0), params)
    seen = [np.asarray(raw, np.float64)]
    step, raw_step = jax.jit(norm_env.step), jax.jit(raw_env.step)
    clipped = 0
    for i in range(12):
        action = jnp.asarray([i % 2, 1, 0, (i // 3) % 2], jnp.int32)
        obs, state, *_ = step(jax.random.key(i + 1), state, action, params)
        raw, raw_state, *_ = raw_step(jax.random.key(i + 1), raw_state, action, params)
        seen.append(np.asarray(raw, np.float64))
        allx = np.concatenate(seen)
        c0, n = 1e-4, len(allx)
        mean = allx.sum(0) / (c0 + n)
        var = (c0 * (1.0 + mean ** 2) + ((allx - mean) ** 2).sum(0)) / (c0 + n)
        np.testing.assert_allclose(state.moments.mean, mean, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(state.moments.var, var, rtol=1e-3, atol=1e-5)
        expected = np.clip((seen[-1] - mean) / np.sqrt(var + 1e-8), -2.0, 2.0)
        np.testing.assert_allclose(obs, expected, rtol=1e-3, atol=1e-3)
        clipped += int(np.sum(np.abs(expected) == 2.0))
    assert clipped > 0


def test_normalize_function_formula_and_clip():
    moments = wrappers.RunningMoments(jnp.asarray([1.0, -2.0, 5.0]), jnp.asarray([4.0, 0.25, 1.0]),
                                      jnp.asarray(10.0))
    obs = jnp.asarray([[3.0, -2.5, 5.0], [1.0, 100.0, -100.0]])
    expected = np.clip((np.asarray(obs) - [1.0, -2.0, 5.0]) / np.sqrt(np.asarray([4.0, 0.25, 1.0]) + 1e-8), -10, 10)
    np.testing.assert_allclose(wrappers.normalize(moments, obs), expected, rtol=1e-6)
    np.testing.assert_allclose(wrappers.normalize(moments, obs, clip=0.5), np.clip(expected, -0.5, 0.5), rtol=1e-6)
    np.testing.assert_allclose(wrappers.normalize(moments, obs)[0], [1.0, -1.0, 0.0], atol=1e-6)


def test_log_wrapper_episode_lengths_and_returns_match_a_counter():
    """Per env: the reported length and return of every finished episode equal a step counter's and a reward
    sum's; between episode ends the reported values stay those of the last finished episode."""
    env, params = CARTPOLE
    venv = wrappers.VecEnv(wrappers.LogWrapper(env), 3)
    obs, state = venv.reset(jax.random.key(1), params)
    step = jax.jit(venv.step)
    length, total = np.zeros(3, int), np.zeros(3)
    last_len, last_ret = np.zeros(3, int), np.zeros(3)
    lengths = []
    for i in range(120):
        action = jax.random.bernoulli(jax.random.key(1000 + i), 0.5, (3,)).astype(jnp.int32)
        obs, state, reward, terminated, truncated, info = step(jax.random.key(i), state, action, params)
        length += 1
        total += np.asarray(reward)
        done = np.asarray(info["returned_episode"])
        np.testing.assert_array_equal(done, np.asarray(terminated | truncated))
        last_len = np.where(done, length, last_len)
        last_ret = np.where(done, total, last_ret)
        np.testing.assert_array_equal(info["returned_episode_lengths"], last_len)
        np.testing.assert_allclose(info["returned_episode_returns"], last_ret)
        lengths += length[done].tolist()
        length, total = np.where(done, 0, length), np.where(done, 0.0, total)
    assert len(lengths) >= 6 and len(set(lengths)) > 2  # random actions: many episodes of different lengths
    mean, count = wrappers.episode_stats(info)
    assert int(count) == int(np.sum(done))


def test_replay_samples_uniformly_from_the_valid_entries_only():
    example = replay.Transition(jnp.zeros(()), jnp.zeros((), jnp.int32), jnp.zeros(()), jnp.zeros(()),
                                jnp.zeros((), bool))
    buffer = replay.init(8, example)

    def batch(ids):
        ids = jnp.asarray(ids, jnp.float32)
        return replay.Transition(ids, ids.astype(jnp.int32), ids, ids + 0.5, ids > 100)

    buffer = replay.add(buffer, batch([11, 12, 13]))
    buffer = replay.add(buffer, batch([14, 15]))  # 5 of 8 slots valid
    draws = 20_000
    sample = replay.sample(jax.random.key(0), buffer, draws)
    ids, counts = np.unique(np.asarray(sample.obs), return_counts=True)
    np.testing.assert_array_equal(ids, [11, 12, 13, 14, 15])  # never an empty slot (0)
    expected, sigma = draws / 5, np.sqrt(draws * 0.2 * 0.8)
    assert np.all(np.abs(counts - expected) < 5 * sigma), counts
    np.testing.assert_array_equal(sample.next_obs, sample.obs + 0.5)  # rows stay whole
    assert not np.array_equal(np.asarray(replay.sample(jax.random.key(1), buffer, 50).obs),
                              np.asarray(replay.sample(jax.random.key(2), buffer, 50).obs))
    # wrap around: 6 more into 8 slots keeps the 8 newest, and all 8 are sampled uniformly
    buffer = replay.add(buffer, batch([16, 17, 18, 19, 20, 21]))
    assert int(buffer.size) == 8 and int(buffer.position) == 3
    ids, counts = np.unique(np.asarray(replay.sample(jax.random.key(3), buffer, draws).obs), return_counts=True)
    np.testing.assert_array_equal(ids, np.arange(14, 22))
    assert np.all(np.abs(counts - draws / 8) < 5 * np.sqrt(draws / 8 * 7 / 8)), counts


def test_dqn_epsilon_linear_decay_then_floor():
    config = dqn.DQNConfig(total_timesteps=1000, start_e=1.0, end_e=0.1, exploration_fraction=0.5,
                           learning_starts=10, batch_size=4)
    steps = jnp.asarray([0, 100, 250, 499, 500, 501, 999])
    expected = np.maximum(1.0 - 0.9 * np.asarray(steps) / 500, 0.1)
    np.testing.assert_allclose(dqn.epsilon(config, steps), expected, rtol=1e-6, atol=1e-7)


def test_ppo_with_observation_normalization():
    """The moments count every observation of the run (the reset's and each step's, per env); the exported
    policy normalizes with them, so it equals the unnormalized policy applied to ``normalize(moments, obs)``."""
    env, params = CARTPOLE
    config = ppo.PPOConfig(total_timesteps=2 * 2 * 16, num_envs=2, num_steps=16, hidden=(8,), update_epochs=1,
                           num_minibatches=2, normalize_observations=True)
    out = jax.jit(ppo.make_train(config, env, params))(jax.random.key(0))
    moments = out.env_state.moments
    assert float(moments.count) == pytest.approx(1e-4 + 2 * (1 + 2 * 16), rel=1e-6)
    assert np.all(np.isfinite(jax.tree_util.tree_leaves(out.train_state.params)[0]))
    assert np.all(np.asarray(moments.var) > 0) and not np.allclose(moments.mean, 0.0)
    obs = jnp.asarray([0.05, 0.3, -0.02, -0.4])
    normalized = ppo.make_policy(config, env, params, out.train_state.params, moments)
    plain = ppo.make_policy(config, env, params, out.train_state.params)
    network = ppo.make_network(config, rl.spec(env, params))
    logits_norm = network.apply(out.train_state.params, wrappers.normalize(moments, obs))[0].logits
    logits_raw = network.apply(out.train_state.params, obs)[0].logits
    assert int(normalized(jax.random.key(0), obs)) == int(jnp.argmax(logits_norm))
    assert int(plain(jax.random.key(0), obs)) == int(jnp.argmax(logits_raw))

# ----------------------------------------------------------------------------------------------------
# Written for mutants of rl/gae.py, replay.py, wrappers.py, ppo.py, dqn.py and td3.py
# Tests added to kill the mutants of ``make mutation`` that survived the RL tests (issue 18): edge cases of GAE and
# n-step targets, of the replay buffer and of the off-policy config checks, and of the wrappers; each against a
# hand-computed value.


def test_gae_of_a_one_step_rollout():
    """T = 1: the advantage is the one-step TD error (bootstrapping from ``bootstrap_values``)."""
    r, v, bv = np.float32([[1.0, 2.0]]), np.float32([[0.5, -1.0]]), np.float32([[3.0, 4.0]])
    term, trunc = np.array([[False, True]]), np.array([[False, False]])
    adv, target = gae.gae(r, v, bv, term, trunc, 0.9, 0.8)
    np.testing.assert_allclose(adv, [[1.0 + 0.9 * 3.0 - 0.5, 2.0 + 1.0]], rtol=1e-6)
    np.testing.assert_allclose(target, [[1.0 + 0.9 * 3.0, 2.0]], rtol=1e-6)


def test_n_step_targets_refuse_n_below_one():
    r = jnp.ones((3, 1))
    no = jnp.zeros((3, 1), bool)
    for n in (0, -1):
        with pytest.raises(ValueError, match="n must be >= 1"):
            gae.n_step_targets(r, r, no, no, 0.9, n)
    np.testing.assert_allclose(gae.n_step_targets(r, r, no, no, 0.5, 1), 1.5 * np.ones((3, 1)))


# ---------------------------------------------------------------- replay buffer and the off-policy config checks

EDGE = dict(total_timesteps=4, num_envs=4, buffer_size=4, batch_size=4, learning_starts=0, gamma=0.0, tau=1.0)


@pytest.mark.parametrize("config_cls", [dqn.DQNConfig, td3.TD3Config])
def test_off_policy_validation_accepts_every_boundary(config_cls):
    """One vectorized step, a buffer of exactly num_envs, a batch of the whole buffer, learning from step 0, and
    gamma / tau at their closed ends are all valid."""
    for changes in ({}, {"gamma": 1.0}, {"tau": 0.5}, {"learning_starts": 3}, {"total_timesteps": 7},
                    {"buffer_size": 9, "total_timesteps": 8, "batch_size": 8}):
        dc.replace(config_cls(), **{**EDGE, **changes}).validate()


@pytest.mark.parametrize("config_cls", [dqn.DQNConfig, td3.TD3Config])
@pytest.mark.parametrize("changes, match", [
    ({"total_timesteps": 3}, "total_timesteps=3 < num_envs=4"),
    ({"buffer_size": 3, "batch_size": 3}, "buffer_size must be >= num_envs"),
    ({"learning_starts": 4}, "learning_starts=4 must be below total_timesteps=4"),
    ({"learning_starts": -1}, "learning_starts must be an integer >= 0"),
    ({"batch_size": 5}, "batch_size=5 exceeds"),
    ({"buffer_size": 5, "total_timesteps": 8, "batch_size": 6}, "batch_size=6 exceeds"),
    ({"gamma": -0.5}, "gamma"), ({"gamma": 1.5}, "gamma"),
    ({"tau": 0.0}, r"tau must be a finite number in \(0.0, 1.0\]"), ({"tau": -0.5}, "tau"), ({"tau": 1.5}, "tau"),
])
def test_off_policy_validation_refuses_just_past_each_boundary(config_cls, changes, match):
    with pytest.raises(ValueError, match=match):
        dc.replace(config_cls(), **{**EDGE, **changes}).validate()


def test_replay_buffer_edges():
    """One slot; a batch that fills the whole buffer; a single-array transition; a first leaf whose trailing axis
    is not the capacity; one valid entry in a larger buffer is the only one sampled."""
    example = replay.Transition(jnp.zeros(4), jnp.zeros((), jnp.int32), jnp.zeros(()), jnp.zeros(4),
                                jnp.zeros((), bool))

    def batch(ids):
        ids = jnp.asarray(ids, jnp.float32)
        return replay.Transition(jnp.repeat(ids[:, None], 4, 1), ids.astype(jnp.int32), ids, ids[:, None] + jnp.ones(4),
                                 ids > 0)

    single = replay.add(replay.init(1, example), batch([7]))
    assert single.capacity == 1 and int(single.size) == 1 and int(single.position) == 0
    np.testing.assert_array_equal(replay.sample(jax.random.key(0), single, 3).action, [7, 7, 7])
    full = replay.add(replay.init(3, example), batch([1, 2, 3]))  # k == capacity
    assert full.capacity == 3 and int(full.size) == 3 and int(full.position) == 0
    np.testing.assert_array_equal(full.data.action, [1, 2, 3])
    np.testing.assert_array_equal(full.data.obs, np.repeat([[1.0], [2.0], [3.0]], 4, 1))
    one_of_five = replay.add(replay.init(5, example), batch([9]))
    assert one_of_five.capacity == 5 and int(one_of_five.size) == 1 and int(one_of_five.position) == 1
    np.testing.assert_array_equal(replay.sample(jax.random.key(1), one_of_five, 64).action, np.full(64, 9))
    plain = replay.add(replay.init(2, jnp.zeros(())), jnp.asarray([5.0]))  # a transition that is one array
    assert plain.capacity == 2 and int(plain.size) == 1
    np.testing.assert_array_equal(plain.data, [5.0, 0.0])
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        replay.init(0, example)


# ---------------------------------------------------------------- wrappers

def test_episode_stats_average_the_finished_episodes_only():
    info = {"returned_episode": jnp.asarray([[True, False, True], [False, False, True]]),
            "returned_episode_returns": jnp.asarray([[10.0, 99.0, 20.0], [-5.0, 7.0, 33.0]])}
    mean, count = wrappers.episode_stats(info)
    assert int(count) == 3 and float(mean) == pytest.approx((10.0 + 20.0 + 33.0) / 3)
    one, count1 = wrappers.episode_stats({k: v[:1, :1] for k, v in info.items()})
    assert int(count1) == 1 and float(one) == 10.0
    none, zero = wrappers.episode_stats({k: v[:, 1] for k, v in info.items()})
    assert int(zero) == 0 and np.isnan(float(none))


def test_vec_env_needs_at_least_one_copy():
    env, params = rl.make("CartPole-v1")
    obs, _ = wrappers.VecEnv(env, 1).reset(jax.random.key(0), params)
    assert obs.shape == (1, 4)
    with pytest.raises(ValueError, match="num_envs must be >= 1"):
        wrappers.VecEnv(env, 0)


def test_normalize_guards_a_zero_variance_with_eps():
    """A coordinate that never varied (var 0): the offset is divided by sqrt(eps) = 1e-4, not by 0 (or NaN)."""
    moments = wrappers.RunningMoments(jnp.asarray([0.0, 2.0]), jnp.asarray([0.0, 1.0]), jnp.asarray(5.0))
    obs = jnp.asarray([3e-5, 2.5])
    np.testing.assert_allclose(wrappers.normalize(moments, obs), [0.3, 0.5], rtol=1e-3)
    np.testing.assert_allclose(wrappers.normalize(moments, obs, eps=1e-6), [0.03, 0.5], rtol=1e-3)


def test_normalize_observation_normalizes_the_final_observation_too():
    """``info["final_observation"]`` (the true last observation of an episode, before the auto-reset) comes back
    normalized with the step's moments, like the observation."""
    env, params = rl.make("CartPole-v1")
    raw_env = wrappers.VecEnv(env, 2)
    norm_env = wrappers.NormalizeObservation(raw_env)
    _, state = norm_env.reset(jax.random.key(0), params)
    _, raw_state = raw_env.reset(jax.random.key(0), params)
    action = jnp.asarray([0, 1], jnp.int32)
    _, state, *_, info = norm_env.step(jax.random.key(1), state, action, params)
    *_, raw_info = raw_env.step(jax.random.key(1), raw_state, action, params)
    np.testing.assert_allclose(info["final_observation"],
                               wrappers.normalize(state.moments, raw_info["final_observation"]), rtol=1e-6)
    assert not np.allclose(info["final_observation"], raw_info["final_observation"])


def _vec_matches_loop(env, params, n, key, action):
    """``VecEnv(env, n)`` reset and one step against a loop over the split keys."""
    venv = wrappers.VecEnv(env, n)
    obs, state = venv.reset(key, params)
    obs2, _, reward, *_ = venv.step(key, state, action, params)
    for i, k in enumerate(jax.random.split(key, n)):
        o, s = env.reset(k, params)
        np.testing.assert_allclose(obs[i], o, rtol=1e-6)
        o2, _, r, *_ = env.step(k, s, action[i], params)
        np.testing.assert_allclose(obs2[i], o2, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(reward[i], r, rtol=1e-5)


def test_vec_env_maps_the_leading_axis_of_keys_states_and_actions():
    """Legacy uint32 keys (split to [n, 2]), state leaves with a trailing axis (a per-copy NormalizeObservation)
    and Box actions ([n, 1]): every copy is mapped over the leading axis."""
    env, params = rl.make("CartPole-v1")
    _vec_matches_loop(env, params, 3, jax.random.PRNGKey(0), jnp.asarray([0, 1, 1]))
    _vec_matches_loop(wrappers.NormalizeObservation(env), params, 3, jax.random.key(1), jnp.asarray([1, 0, 1]))
    pendulum, pparams = rl.make("Pendulum-v1")
    _vec_matches_loop(pendulum, pparams, 3, jax.random.key(2), jnp.asarray([[-1.5], [0.2], [2.0]]))


def test_normalize_observation_clips_at_ten_by_default():
    """Moments of a (nearly) constant past make the next observation hundreds of sigmas out: clipped to +-10."""
    env, params = rl.make("CartPole-v1")
    norm_env = wrappers.NormalizeObservation(wrappers.VecEnv(env, 4))
    _, state = norm_env.reset(jax.random.key(0), params)
    state = state.replace(moments=wrappers.RunningMoments(jnp.zeros(4), jnp.full(4, 1e-8), jnp.asarray(1e12)))
    obs, *_ = norm_env.step(jax.random.key(1), state, jnp.asarray([0, 1, 0, 1]), params)
    assert float(jnp.max(jnp.abs(obs))) == 10.0


# ---------------------------------------------------------------- the RL losses (ppo.loss, td3 targets/losses, dqn)


def _ppo_case():
    logits = np.array([[0.3, -0.2], [1.0, 0.0], [0.0, 2.0], [0.5, 0.5]], np.float32)
    new_values = np.array([1.0, 0.0, -1.0, 2.0], np.float32)
    apply_fn = lambda params, obs: (networks.Categorical(jnp.asarray(logits) * params),
                                    jnp.asarray(new_values) * params)
    batch = ppo.Batch(obs=jnp.zeros((4, 1)), actions=jnp.array([0, 0, 1, 1]), rewards=None, terminated=None,
                      truncated=None, values=jnp.array([0.5, 0.5, 0.5, 0.5]),
                      log_probs=jnp.log(jnp.array([0.4, 0.99, 0.5, 0.45])), bootstrap_values=None)
    return logits, new_values, apply_fn, batch


def test_ppo_loss_normalized_advantages_unclipped_value_and_aux():
    """The defaults (advantages normalized with the population std + 1e-8, clipped value loss), the plain value
    loss, and ``approx_kl = mean((r - 1) - log r)``, ``clip_fraction = mean(|r - 1| > eps)``, entropy; advantages
    offset away from 0."""
    logits, v, apply_fn, batch = _ppo_case()
    adv, tgt = jnp.array([3.0, 1.0, 5.0, 2.5]), jnp.array([2.0, 0.0, 0.0, 2.3])
    eps = 0.2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    ratio = p[np.arange(4), [0, 0, 1, 1]] / np.array([0.4, 0.99, 0.5, 0.45])
    a = np.asarray(adv, np.float64)
    a = (a - a.mean()) / (a.std() + 1e-8)
    pl = -np.mean(np.minimum(ratio * a, np.clip(ratio, 1 - eps, 1 + eps) * a))
    t = np.asarray(tgt)
    vl_clipped = 0.5 * np.mean(np.maximum((v - t) ** 2, (0.5 + np.clip(v - 0.5, -eps, eps) - t) ** 2))
    vl_plain = 0.5 * np.mean((v - t) ** 2)
    ent = np.mean(-(p * np.log(p)).sum(1))
    for clip_value_loss, vl in ((None, vl_clipped), (False, vl_plain)):
        kwargs = {} if clip_value_loss is None else {"clip_value_loss": clip_value_loss}
        total, aux = ppo.loss(1.0, apply_fn, batch, adv, tgt, clip_eps=eps, vf_coef=0.7, ent_coef=0.03, **kwargs)
        np.testing.assert_allclose(aux["policy_loss"], pl, rtol=1e-5)
        np.testing.assert_allclose(aux["value_loss"], vl, rtol=1e-5)
        np.testing.assert_allclose(aux["entropy"], ent, rtol=1e-5)
        np.testing.assert_allclose(total, pl + 0.7 * vl - 0.03 * ent, rtol=1e-5)
        np.testing.assert_allclose(aux["approx_kl"], np.mean((ratio - 1) - np.log(ratio)), rtol=1e-4)
        np.testing.assert_allclose(aux["clip_fraction"], np.mean(np.abs(ratio - 1) > eps), rtol=1e-6)
    assert 0 < float(aux["clip_fraction"]) < 1 and ratio.min() < 1 - eps < 1 + eps < ratio.max()
    # the 1e-8 is added to the std: advantages with std 1e-8 normalize to +-1/2 (with std - 1e-8: +-inf)
    tiny = jnp.array([0.0, 2e-8, 0.0, 2e-8])
    _, aux = ppo.loss(1.0, apply_fn, batch, tiny, tgt, clip_eps=eps, vf_coef=0.7, ent_coef=0.03)
    half = np.array([-0.5, 0.5, -0.5, 0.5])
    np.testing.assert_allclose(aux["policy_loss"], -np.mean(np.minimum(ratio * half,
                                                                       np.clip(ratio, 1 - eps, 1 + eps) * half)),
                               rtol=1e-3)
    with pytest.raises(TypeError):  # the coefficients are keyword-only
        ppo.loss(1.0, apply_fn, batch, adv, tgt, eps, 0.7, 0.03)
    # at clip_eps = 0 a ratio of exactly 1 is not clipped: |r - 1| > 0 is strict
    same = batch._replace(log_probs=networks.Categorical(jnp.asarray(logits)).log_prob(batch.actions))
    _, aux = ppo.loss(1.0, apply_fn, same, adv, tgt, clip_eps=0.0, vf_coef=0.5, ent_coef=0.0)
    assert float(aux["clip_fraction"]) == 0.0 and float(aux["approx_kl"]) == 0.0


def test_td3_targets_clip_noise_and_actions_at_both_ends():
    """Three transitions: the smoothing noise is clipped to [-c, c] on both sides, the next action to [-1, 1] on both
    sides, the min runs over the twin critics (axis 0 of [2, B]), and a terminated row keeps only its reward; the
    critic loss of three rows."""
    key = jax.random.key(0)
    raw = np.asarray(jax.random.normal(key, (3, 1)))
    actor_fn = lambda params, obs: params * obs  # next actions -1.5 .. 1.5, so both action clips bite
    critic_fn = lambda params, obs, act: jnp.stack([jnp.sum(obs + act, -1) + params, jnp.sum(2.0 * act - obs, -1)])
    next_obs = np.array([[-1.5], [0.1], [1.5]], np.float32)
    batch = td3.Transition(obs=jnp.zeros((3, 1)), action=jnp.zeros((3, 1)), reward=jnp.array([1.0, -2.0, 0.5]),
                           next_obs=jnp.asarray(next_obs), terminated=jnp.array([False, True, False]))
    for policy_noise, noise_clip in ((3.0, 0.4), (0.05, 1.0)):
        y = td3.td_targets(key, actor_fn, critic_fn, 1.0, 0.25, batch, gamma=0.9, policy_noise=policy_noise,
                           noise_clip=noise_clip)
        noise = np.clip(policy_noise * raw, -noise_clip, noise_clip)
        na = np.clip(next_obs + noise, -1, 1)
        q = np.stack([(next_obs + na)[:, 0] + 0.25, (2 * na - next_obs)[:, 0]])
        ref = np.array([1.0, -2.0, 0.5]) + 0.9 * np.array([1.0, 0.0, 1.0]) * q.min(0)
        np.testing.assert_allclose(y, ref, rtol=1e-5)
    assert np.ptp(np.sign(3.0 * raw)) == 2, "the draws must have both signs for the noise clip to bite twice"
    # critic_loss over B = 3 rows: the mean runs over the batch, the sum over the two critics
    q = np.stack([(next_obs + 0.2)[:, 0] + 0.25, (2 * 0.2 - next_obs)[:, 0]])
    y = np.array([0.5, -1.0, 2.0], np.float32)
    np.testing.assert_allclose(td3.critic_loss(0.25, critic_fn, batch._replace(obs=jnp.asarray(next_obs),
                                                                               action=jnp.full((3, 1), 0.2)),
                                               jnp.asarray(y)), ((q - y) ** 2).mean(1).sum(), rtol=1e-5)
    with pytest.raises(TypeError):  # gamma and the noise scales are keyword-only
        td3.td_targets(key, actor_fn, critic_fn, 1.0, 0.25, batch, 0.9, 0.2, 0.5)


def test_dqn_td_loss_terminal_rows_and_leading_axes():
    """Q tables over [E, B] = [2, 3] leading axes (the arg max and gathers run on the last axis), one terminated
    row that keeps only its reward, three actions so a wrong gather shows, and online / target parameters whose
    arg max differ (double DQN, the default, selects with the online net); gamma is keyword-only."""
    rng = np.random.default_rng(0)
    q_now, q_next = rng.normal(size=(2, 3, 3)) + 1.0, rng.normal(size=(2, 3, 3)) + 1.0
    online, target = np.array([0.3, -0.2, 0.1]), np.array([-3.0, 3.0, 0.0])  # per-action shifts
    q_fn = lambda params, obs: jnp.where(obs[..., :1] > 0, jnp.asarray(q_next, jnp.float32),
                                         jnp.asarray(q_now, jnp.float32)) + params
    action = np.array([[2, 0, 1], [1, 2, 0]])
    reward = np.array([[0.5, 1.0, -1.0], [2.0, 0.0, 1.5]])
    terminated = np.array([[False, True, False], [False, False, True]])
    batch = dqn.Transition(obs=jnp.zeros((2, 3, 1)), action=jnp.asarray(action), reward=jnp.asarray(reward),
                           next_obs=jnp.ones((2, 3, 1)), terminated=jnp.asarray(terminated))
    p_on, p_tg = jnp.asarray(online, jnp.float32), jnp.asarray(target, jnp.float32)
    losses = {}
    for double_q in (None, False):
        kwargs = {} if double_q is None else {"double_q": double_q}
        got = dqn.td_loss(p_on, p_tg, q_fn, batch, gamma=0.8, **kwargs)
        target_next = q_next + target
        best = (q_next + online if double_q is None else target_next).argmax(-1)
        y = reward + 0.8 * (1 - terminated) * np.take_along_axis(target_next, best[..., None], -1)[..., 0]
        q = np.take_along_axis(q_now + online, action[..., None], -1)[..., 0]
        np.testing.assert_allclose(got, np.mean((q - y) ** 2), rtol=1e-5)
        losses[double_q] = float(got)
    assert abs(losses[None] - losses[False]) > 0.1  # the two selections differ on this data
    with pytest.raises(TypeError):
        dqn.td_loss(p_on, p_tg, q_fn, batch, 0.8)
