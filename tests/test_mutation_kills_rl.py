"""Tests added to kill the mutants of ``make mutation`` that survived the RL tests (issue 18): edge cases of GAE and
n-step targets, of the replay buffer and of the off-policy config checks, and of the wrappers; each against a
hand-computed value."""

import dataclasses as dc

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks import rl
from fedjax_attacks.rl import dqn, gae, networks, ppo, replay, td3, wrappers


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
