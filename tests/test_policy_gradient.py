"""Tests of fedjax_attacks.rl.policy_gradient against plain Python-loop references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks.rl import env as rl_env
from fedjax_attacks.rl import policy_gradient as pg

GAMMA = 0.9


@pytest.fixture(autouse=True)
def full_precision():
    """The estimators' algebra is compared with loops at float32 precision: the policy's forward pass keeps the
    device's default in the library, which on a TF32 GPU moves both sides by ~1e-3 relative, differently."""
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="module")
def cartpole():
    env, params = rl_env.make("CartPole-v1")
    policy = pg.make_policy(env, params, hidden=(8,))
    return env, params, policy


def random_trajectories(key, policy, horizon, episodes, lengths):
    k_obs, k_act, k_rew = jax.random.split(key, 3)
    mask = (np.arange(horizon)[:, None] < np.asarray(lengths)[None, :]).astype(np.float32)
    return pg.Trajectories(
        obs=jax.random.normal(k_obs, (horizon, episodes, 4)),
        actions=jax.random.randint(k_act, (horizon, episodes), 0, 2),
        rewards=jnp.asarray(mask) * jax.random.uniform(k_rew, (horizon, episodes)),
        mask=jnp.asarray(mask),
    )


def loop_estimate(policy, theta, traj, gamma, kind, weights=None):
    """Per-episode, per-step Python loop of GPOMDP / REINFORCE with single-sample gradients."""
    grad_logp = jax.jit(jax.grad(lambda th, s, a: policy.log_prob(th, s[None], a[None])[0]))
    horizon, episodes = traj.mask.shape
    total = np.zeros(policy.num_params)
    for b in range(episodes):
        length = int(traj.mask[:, b].sum())
        rewards = [float(traj.rewards[t, b]) for t in range(length)]
        for t in range(length):
            if kind == "gpomdp":
                coef = sum(gamma**u * rewards[u] for u in range(t, length))
            else:
                coef = sum(gamma**u * rewards[u] for u in range(length))
            w = 1.0 if weights is None else weights[b]
            total += w * coef * np.asarray(grad_logp(theta, traj.obs[t, b], traj.actions[t, b]))
    return total / episodes


def test_rewards_to_go_matches_loop():
    rewards = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    got = np.asarray(pg.discounted_rewards_to_go(jnp.asarray(rewards), GAMMA))
    want = np.array([[sum(GAMMA**u * rewards[u, b] for u in range(t, 7)) for b in range(3)] for t in range(7)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["gpomdp", "reinforce"])
def test_estimators_match_loop(cartpole, kind):
    _, _, policy = cartpole
    theta = policy.init(jax.random.PRNGKey(0))
    # horizon 60 > one block of 25 steps; episodes end at different times, one runs to the horizon
    traj = random_trajectories(jax.random.PRNGKey(1), policy, 60, 3, [5, 31, 60])
    fn = pg.gpomdp if kind == "gpomdp" else pg.reinforce
    got = np.asarray(jax.jit(lambda th, tr: fn(policy, th, tr, GAMMA))(theta, traj))
    np.testing.assert_allclose(got, loop_estimate(policy, theta, traj, GAMMA, kind), rtol=2e-4, atol=2e-5)


def test_importance_weights_equal_product_of_ratios(cartpole):
    """PAGE-PG importance weights equal the product of probability ratios where that does not underflow."""
    _, _, policy = cartpole
    theta = policy.init(jax.random.PRNGKey(0))
    theta_prev = theta + 0.05 * jax.random.normal(jax.random.PRNGKey(5), theta.shape)
    traj = random_trajectories(jax.random.PRNGKey(2), policy, 12, 4, [3, 12, 7, 1])
    got = np.exp(np.asarray(pg.log_importance_weights(policy, theta, theta_prev, traj)))
    p_new = np.exp(np.asarray(policy.log_prob(theta, traj.obs, traj.actions), np.float64))
    p_old = np.exp(np.asarray(policy.log_prob(theta_prev, traj.obs, traj.actions), np.float64))
    want = [np.prod([p_old[t, b] / p_new[t, b] for t in range(int(traj.mask[:, b].sum()))]) for b in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_importance_weights_survive_where_raw_products_underflow(cartpole):
    _, _, policy = cartpole
    theta = policy.init(jax.random.PRNGKey(0))
    theta_prev = theta + 0.01 * jax.random.normal(jax.random.PRNGKey(6), theta.shape)
    traj = random_trajectories(jax.random.PRNGKey(3), policy, 500, 2, [500, 500])
    logp = np.asarray(policy.log_prob(theta, traj.obs, traj.actions))
    raw = np.prod(np.exp(logp).astype(np.float32), axis=0)
    assert np.all(raw == 0.0)  # the reference's product of probabilities underflows to 0 (weight 0/0)
    log_w = np.asarray(pg.log_importance_weights(policy, theta, theta_prev, traj))
    logp_prev = np.asarray(policy.log_prob(theta_prev, traj.obs, traj.actions), np.float64)
    np.testing.assert_allclose(log_w, (logp_prev - logp).sum(0), rtol=1e-3, atol=1e-3)
    assert np.all(np.isfinite(np.exp(log_w)))


def test_page_pg_estimate_matches_definition(cartpole):
    _, _, policy = cartpole
    theta = policy.init(jax.random.PRNGKey(0))
    theta_prev = theta + 0.05 * jax.random.normal(jax.random.PRNGKey(7), theta.shape)
    v_prev = jax.random.normal(jax.random.PRNGKey(8), theta.shape)
    traj = random_trajectories(jax.random.PRNGKey(4), policy, 30, 3, [30, 4, 17])
    got = pg.page_pg_estimate(policy, theta, theta_prev, v_prev, traj, GAMMA)
    w = np.exp(np.asarray(pg.log_importance_weights(policy, theta, theta_prev, traj)))
    want = (np.asarray(v_prev) + loop_estimate(policy, theta, traj, GAMMA, "gpomdp")
            - loop_estimate(policy, theta_prev, traj, GAMMA, "gpomdp", weights=w))
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-5)
    # at theta_prev == theta the weights are 1 and the correction vanishes
    same = pg.page_pg_estimate(policy, theta, theta, v_prev, traj, GAMMA)
    np.testing.assert_allclose(np.asarray(same), np.asarray(v_prev), atol=1e-5)


def test_page_pg_per_step_weights_match_loop(cartpole):
    """``per_step``: sum_h w_{0:h} gamma^h r_h sum_{t <= h} grad log pi_prev(a_t|s_t), w_{0:h} a product of ratios."""
    _, _, policy = cartpole
    theta = policy.init(jax.random.PRNGKey(0))
    theta_prev = theta + 0.05 * jax.random.normal(jax.random.PRNGKey(9), theta.shape)
    v_prev = jax.random.normal(jax.random.PRNGKey(10), theta.shape)
    lengths = [30, 4, 17]
    traj = random_trajectories(jax.random.PRNGKey(11), policy, 30, 3, lengths)
    got = pg.page_pg_estimate(policy, theta, theta_prev, v_prev, traj, GAMMA, "per_step")
    grad_logp = jax.jit(jax.grad(lambda th, s, a: policy.log_prob(th, s[None], a[None])[0]))
    p_now = np.exp(np.asarray(policy.log_prob(theta, traj.obs, traj.actions), np.float64))
    p_prev = np.exp(np.asarray(policy.log_prob(theta_prev, traj.obs, traj.actions), np.float64))
    corrected = np.zeros(policy.num_params)
    for b, length in enumerate(lengths):
        scores = np.cumsum([np.asarray(grad_logp(theta_prev, traj.obs[t, b], traj.actions[t, b]))
                            for t in range(length)], axis=0)
        for h in range(length):
            w = np.prod(p_prev[: h + 1, b] / p_now[: h + 1, b])
            corrected += w * GAMMA**h * float(traj.rewards[h, b]) * scores[h]
    want = np.asarray(v_prev) + loop_estimate(policy, theta, traj, GAMMA, "gpomdp") - corrected / 3
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-5)
    with pytest.raises(ValueError, match="importance_weights"):
        pg.page_pg_estimate(policy, theta, theta_prev, v_prev, traj, GAMMA, "bogus")


def test_sample_trajectories_masks_and_returns(cartpole):
    env, params, policy = cartpole
    theta = policy.init(jax.random.PRNGKey(0))
    sample = jax.jit(lambda k, r: pg.sample_trajectories(k, policy, theta, env, params, num_episodes=16,
                                                         horizon=40, random_actions=r))
    traj = sample(jax.random.PRNGKey(1), False)
    mask = np.asarray(traj.mask)
    assert mask.shape == (40, 16)
    assert np.all(np.diff(mask, axis=0) <= 0)  # 1 until termination, then 0
    assert np.all(np.asarray(traj.rewards)[mask == 0] == 0)
    # CartPole pays 1 per step: the undiscounted return is the episode length
    np.testing.assert_allclose(np.asarray(pg.episode_returns(traj)), mask.sum(0))
    assert mask.sum(0).min() >= 8  # CartPole cannot fall in fewer than ~8 steps
    random = sample(jax.random.PRNGKey(2), True)
    frac = float((np.asarray(random.actions) * np.asarray(random.mask)).sum() / np.asarray(random.mask).sum())
    assert 0.35 < frac < 0.65


@pytest.mark.slow  # a brax compile: ~30 s on 2 cores
def test_gaussian_policy_log_prob_and_brax_rollout():
    env, params = rl_env.make("brax:inverted_pendulum", episode_length=20)
    policy = pg.make_policy(env, params, hidden=(8,), activation="tanh", log_std_init=-0.5)
    theta = policy.init(jax.random.PRNGKey(0))
    obs = jnp.broadcast_to(jax.random.normal(jax.random.PRNGKey(1), (env.observation_space(params).shape[0],)),
                           (20000, env.observation_space(params).shape[0]))
    actions = policy.sample(jax.random.PRNGKey(2), theta, obs)
    np.testing.assert_allclose(np.asarray(actions).std(0), np.exp(-0.5), rtol=0.03)
    # E[log N(a; mu, sigma^2)] = -d/2 (1 + log(2 pi sigma^2)) under the policy's own samples
    want = -0.5 * env.num_actions * (1 + np.log(2 * np.pi * np.exp(-1.0)))
    np.testing.assert_allclose(float(policy.log_prob(theta, obs, actions).mean()), want, atol=0.03)
    traj = jax.jit(lambda k: pg.sample_trajectories(k, policy, theta, env, params, num_episodes=2,
                                                    horizon=20))(jax.random.PRNGKey(4))
    grad = pg.gpomdp(policy, theta, traj, 0.99)
    assert traj.actions.shape == (20, 2, env.num_actions)
    assert np.all(np.isfinite(np.asarray(grad))) and np.linalg.norm(np.asarray(grad)) > 0


def test_mode_is_the_most_likely_action(cartpole):
    """``Policy.mode``: the categorical's largest-probability action; the Gaussian's mean, where ``log_prob``
    reaches its maximum ``-sum(log sigma) - d/2 log(2 pi)``."""
    _, _, policy = cartpole
    theta = policy.init(jax.random.PRNGKey(0)) * 3.0  # sharper logits: both actions are someone's argmax
    obs = jax.random.normal(jax.random.PRNGKey(1), (64, 4))
    scores = jnp.stack([policy.log_prob(theta, obs, jnp.full((64,), a)) for a in range(2)])
    want = np.argmax(np.asarray(scores), axis=0)
    assert 0 < want.sum() < 64
    np.testing.assert_array_equal(np.asarray(policy.mode(theta, obs)), want)

    env, params = rl_env.make("Pendulum-v1")
    gaussian = pg.make_policy(env, params, hidden=(8,), activation="tanh", log_std_init=-0.3)
    theta = gaussian.init(jax.random.PRNGKey(2))
    obs = jax.random.normal(jax.random.PRNGKey(3), (64, 3))
    mode = gaussian.mode(theta, obs)
    assert mode.shape == (64, 1) and float(jnp.std(mode)) > 1e-3  # depends on the state
    np.testing.assert_allclose(np.asarray(gaussian.log_prob(theta, obs, mode)),
                               0.3 - 0.5 * np.log(2 * np.pi), rtol=1e-6)
    samples = gaussian.sample(jax.random.PRNGKey(4), theta, jnp.broadcast_to(obs[:1], (20000, 3)))
    np.testing.assert_allclose(float(samples.mean()), float(mode[0, 0]), atol=0.02)
