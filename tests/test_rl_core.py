"""Unit tests of the RL building blocks against plain NumPy / Python-loop references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.environments import environment, spaces
from hypothesis import given, settings, strategies as st

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
