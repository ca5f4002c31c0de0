"""Policy-gradient estimators on flat parameters: REINFORCE, GPOMDP and the PAGE-PG recursion.

Notation follows ByzPG / DecByzPG (Jordan et al., AAMAS 2024, App. A.1) and PAGE-PG (Gargiani et al., 2022):
a policy ``pi_theta`` with flat parameters ``theta: f32[d]``, trajectories ``tau`` of a fixed horizon ``H``
sampled in a batch, the discount ``gamma``, and

* REINFORCE  ``g(tau | theta) = sum_t grad log pi(a_t|s_t) * sum_t' gamma^t' r_t'``;
* GPOMDP     ``g(tau | theta) = sum_t grad log pi(a_t|s_t) * sum_{t' >= t} gamma^t' r_t'``;
* PAGE-PG    ``v_t = v_{t-1} + 1/B sum_tau [g(tau | theta_t) - w(tau) g(tau | theta_{t-1})]`` on a small batch
  sampled at ``theta_t``, with the importance weight ``w(tau) = pi_{theta_{t-1}}(tau) / pi_{theta_t}(tau)``.

The weight is computed as ``exp(sum_t log pi_{t-1} - sum_t log pi_t)``, in log space: the reference code
multiplies raw per-step probabilities, which underflows to zero on long episodes (then ``w = 0`` and the
correction term silently disappears).

Trajectories have a static shape ``[H, B, ...]`` with a mask that is 1 on the steps an episode is running and 0
after it terminated; rollouts stop early (``lax.while_loop``) once every episode of the batch has ended.
"""

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import spaces
from jax.flatten_util import ravel_pytree

from fedjax_attacks.rl import env as rl_env
from fedjax_attacks.rl import networks

CHUNK = 25  # steps per rollout block and per gradient block


class Policy(NamedTuple):
    """A stochastic policy ``pi_theta`` over flat parameters ``theta: f32[d]``.

    Attributes:
      init: ``init(key) -> theta`` (f32[d]).
      sample: ``sample(key, theta, obs[B, *obs_shape]) -> actions[B, ...]``.
      log_prob: ``log_prob(theta, obs[..., *obs_shape], actions[...]) -> f32[...]``, ``log pi_theta(a|s)``.
      num_params: ``d``.
      mode: ``mode(theta, obs[B, *obs_shape]) -> actions[B, ...]``, the most likely action ``argmax_a
        pi_theta(a|s)`` (the largest logit; a Gaussian's mean), what a greedy evaluation takes.
    """

    init: Callable
    sample: Callable
    log_prob: Callable
    num_params: int
    mode: Callable = None


@struct.dataclass
class Trajectories:
    """A batch of ``B`` episodes of horizon ``H``.

    Attributes:
      obs: f32[H, B, *obs_shape], the state ``s_t`` each action was taken in.
      actions: [H, B, ...] actions ``a_t`` as sampled by the policy (before any clipping to the action box).
      rewards: f32[H, B] rewards ``r_t``, zero once the episode has ended.
      mask: f32[H, B], 1 while the episode is running at step ``t``, 0 after it terminated.
    """

    obs: jax.Array
    actions: jax.Array
    rewards: jax.Array
    mask: jax.Array


def _check_activations(*names):
    for name in names:
        networks.activation(name)


def categorical_policy(obs_shape: tuple, num_actions: int, hidden=(16, 16), activation: str = "relu",
                       output_activation: str = "tanh") -> Policy:
    """Categorical MLP policy: ``pi_theta(.|s) = softmax(out_act(MLP_theta(s)))``.

    The paper's CartPole policy is ``hidden=(16, 16)``, ReLU, tanh output (bounded logits); LunarLander's is
    ``(64, 64)`` with tanh.
    """
    _check_activations(activation, output_activation)
    if num_actions < 2:
        raise ValueError(f"a categorical policy needs >= 2 actions, got {num_actions}")
    net = networks.MLP(tuple(hidden), activation, int(num_actions), output_activation, orthogonal_init=False)
    dummy = jnp.zeros((1, *obs_shape), jnp.float32)
    _, unravel = ravel_pytree(net.init(jax.random.PRNGKey(0), dummy))

    def init(key):
        return ravel_pytree(net.init(key, dummy))[0]

    def logits(theta, obs):
        return net.apply(unravel(theta), obs.reshape(*obs.shape[: obs.ndim - len(obs_shape)], -1))

    def sample(key, theta, obs):
        return jax.random.categorical(key, logits(theta, obs)).astype(jnp.int32)

    def log_prob(theta, obs, actions):
        logp = jax.nn.log_softmax(logits(theta, obs))
        return jnp.take_along_axis(logp, actions[..., None].astype(jnp.int32), axis=-1)[..., 0]

    def mode(theta, obs):
        return jnp.argmax(logits(theta, obs), axis=-1).astype(jnp.int32)

    return Policy(init, sample, log_prob, int(init(jax.random.PRNGKey(0)).size), mode)


def gaussian_policy(obs_shape: tuple, action_dim: int, hidden=(64, 64), activation: str = "tanh",
                    output_activation: str = "tanh", log_std_init: float = -0.5) -> Policy:
    """Diagonal Gaussian policy ``N(out_act(MLP_theta(s)), diag(exp(2 log_std)))`` with a learned ``log_std``."""
    _check_activations(activation, output_activation)
    net = networks.MLP(tuple(hidden), activation, int(action_dim), output_activation, orthogonal_init=False)
    dummy = jnp.zeros((1, *obs_shape), jnp.float32)

    def init_tree(key):
        return {"mlp": net.init(key, dummy), "log_std": jnp.full((action_dim,), log_std_init, jnp.float32)}

    _, unravel = ravel_pytree(init_tree(jax.random.PRNGKey(0)))

    def init(key):
        return ravel_pytree(init_tree(key))[0]

    def mean_std(theta, obs):
        tree = unravel(theta)
        mean = net.apply(tree["mlp"], obs.reshape(*obs.shape[: obs.ndim - len(obs_shape)], -1))
        return mean, jnp.exp(tree["log_std"])

    def sample(key, theta, obs):
        mean, std = mean_std(theta, obs)
        return mean + std * jax.random.normal(key, mean.shape)

    def log_prob(theta, obs, actions):
        mean, std = mean_std(theta, obs)
        z = (actions - mean) / std
        return jnp.sum(-0.5 * z**2 - jnp.log(std) - 0.5 * jnp.log(2 * jnp.pi), axis=-1)

    def mode(theta, obs):
        return mean_std(theta, obs)[0]

    return Policy(init, sample, log_prob, int(init(jax.random.PRNGKey(0)).size), mode)


def make_policy(env, env_params, hidden=(16, 16), activation: str = "relu", output_activation: str = "tanh",
                log_std_init: float = -0.5) -> Policy:
    """Categorical policy for a ``Discrete`` action space, Gaussian for a ``Box``, sized from ``env``."""
    obs_shape = tuple(env.observation_space(env_params).shape)
    space = env.action_space(env_params)
    if isinstance(space, spaces.Discrete):
        return categorical_policy(obs_shape, int(space.n), hidden, activation, output_activation)
    if isinstance(space, spaces.Box) and len(space.shape) == 1:
        return gaussian_policy(obs_shape, int(space.shape[0]), hidden, activation, output_activation, log_std_init)
    raise ValueError(f"unsupported action space {space!r}: need Discrete or a 1-d Box")


def sample_trajectories(key, policy: Policy, theta, env, env_params, *, num_episodes: int, horizon: int,
                        random_actions=False, chunk: int = CHUNK) -> Trajectories:
    """Samples ``B = num_episodes`` episodes of at most ``H = horizon`` steps with ``pi_theta``.

    Args:
      key: PRNG key.
      policy, theta: the policy and its flat parameters.
      env, env_params: a gymnax-shaped environment (``fedjax_attacks.rl.env.make``).
      num_episodes, horizon: static ``B`` and ``H``.
      random_actions: bool (may be traced): act uniformly at random instead of following ``pi_theta`` (the
        RandomAction Byzantine behaviour); the recorded actions are the ones taken.
      chunk: static number of steps per ``lax.scan`` block; the rollout stops after the first block in which
        every episode has ended (a per-step early exit would copy the buffers every step under ``vmap``).

    Returns:
      ``Trajectories`` with static shapes ``[H, B, ...]``. Box actions are clipped to the bounds when sent to
      the environment but recorded unclipped, so ``log_prob`` matches the sampling distribution.
    """
    space = env.action_space(env_params)
    clip = isinstance(space, spaces.Box)
    num_chunks = -(-horizon // chunk)
    key, reset_key = jax.random.split(key)
    obs, state = jax.vmap(env.reset, in_axes=(0, None))(jax.random.split(reset_key, num_episodes), env_params)
    probe = policy.sample(key, theta, obs)
    buffers = Trajectories(
        obs=jnp.zeros((num_chunks * chunk, *obs.shape), jnp.float32),
        actions=jnp.zeros((num_chunks * chunk, *probe.shape), probe.dtype),
        rewards=jnp.zeros((num_chunks * chunk, num_episodes), jnp.float32),
        mask=jnp.zeros((num_chunks * chunk, num_episodes), jnp.float32),
    )

    def step(carry, t):
        key, state, obs, alive = carry
        key, k_pi, k_rand, k_env = jax.random.split(key, 4)
        action = policy.sample(k_pi, theta, obs)
        if random_actions is not False:  # a Python False compiles no uniform sampling
            uniform = jax.vmap(space.sample)(jax.random.split(k_rand, num_episodes)).astype(action.dtype)
            action = jnp.where(random_actions, uniform, action)
        env_action = jnp.clip(action, space.low, space.high) if clip else action
        next_obs, next_state, reward, terminated, truncated = jax.vmap(
            lambda k, s, a: rl_env.step_without_reset(env, k, s, a, env_params))(
            jax.random.split(k_env, num_episodes), state, env_action)
        live = (alive & (t < horizon)).astype(jnp.float32)
        out = Trajectories(obs.astype(jnp.float32), action, live * reward.astype(jnp.float32), live)
        # finished episodes stay at their last state (no reset is computed, and nothing steps past the end)
        keep = lambda new, old: jnp.where(alive.reshape(-1, *([1] * (new.ndim - 1))), new, old)
        state, next_obs = jax.tree.map(keep, (next_state, next_obs), (state, obs))
        return (key, state, next_obs, alive & ~(terminated | truncated)), out

    def cond(carry):
        c, _, _, _, alive, _ = carry
        return (c < num_chunks) & jnp.any(alive)

    def body(carry):
        c, key, state, obs, alive, buf = carry
        (key, state, obs, alive), block = jax.lax.scan(step, (key, state, obs, alive), c * chunk + jnp.arange(chunk))
        buf = jax.tree.map(lambda b, x: jax.lax.dynamic_update_slice_in_dim(b, x, c * chunk, axis=0), buf, block)
        return c + 1, key, state, obs, alive, buf

    carry = (jnp.zeros((), jnp.int32), key, state, obs, jnp.ones((num_episodes,), bool), buffers)
    buf = jax.lax.while_loop(cond, body, carry)[-1]
    return jax.tree.map(lambda x: x[:horizon], buf)


def episode_returns(traj: Trajectories) -> jax.Array:
    """Undiscounted return ``sum_t r_t`` of each episode, f32[B]."""
    return jnp.sum(traj.rewards, axis=0)


def discounted_rewards_to_go(rewards, gamma: float) -> jax.Array:
    """``G_t = sum_{t' >= t} gamma^t' r_t'`` (discounted from the episode start, as in GPOMDP), f32[H, B]."""
    discounts = gamma ** jnp.arange(rewards.shape[0], dtype=jnp.float32)
    weighted = rewards * discounts.reshape(-1, *([1] * (rewards.ndim - 1)))
    return jnp.flip(jnp.cumsum(jnp.flip(weighted, 0), axis=0), 0)


def reduce_live_blocks(fn, traj: Trajectories, extra, zero, chunk: int = 5):
    """``sum_c fn(block_c)`` over blocks of ``chunk`` steps of ``(obs, actions, mask, extra)`` ([H, B, ...]).

    Stops at the first block in which every episode has ended (masks only go from 1 to 0), so short episodes
    in a long horizon cost little; ``zero`` is the accumulator's initial value (a pytree).
    """
    horizon = traj.mask.shape[0]
    num_chunks = -(-horizon // chunk)
    pad = num_chunks * chunk - horizon
    arrays = (traj.obs, traj.actions, traj.mask, extra)
    if pad:
        arrays = jax.tree.map(lambda x: jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)), arrays)
    live = jnp.pad(jnp.any(traj.mask > 0, axis=1), (0, pad))

    def cond(carry):
        c, _ = carry
        return (c < num_chunks) & live[jnp.minimum(c, num_chunks - 1) * chunk]

    def body(carry):
        c, acc = carry
        block = jax.tree.map(lambda x: jax.lax.dynamic_slice_in_dim(x, c * chunk, chunk, axis=0), arrays)
        return c + 1, jax.tree.map(jnp.add, acc, fn(*block))

    return jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), zero))[1]


def log_importance_weights(policy: Policy, theta, theta_prev, traj: Trajectories) -> jax.Array:
    """``log w(tau) = log pi_{theta_prev}(tau) - log pi_theta(tau)`` per episode, f32[B], in log space."""
    def block(obs, actions, mask, _):
        diff = policy.log_prob(theta_prev, obs, actions) - policy.log_prob(theta, obs, actions)
        return jnp.sum(mask * diff, axis=0)

    return reduce_live_blocks(block, traj, traj.mask, jnp.zeros(traj.mask.shape[1]))


def score_gradient(policy: Policy, theta, traj: Trajectories, coef) -> jax.Array:
    """``sum_{t, b} mask_t grad log pi_theta(a_t | s_t) coef[t, b]``, f32[d], with ``coef`` a constant."""
    def block(obs, actions, mask, weight):
        return jax.grad(lambda th: jnp.sum(mask * weight * policy.log_prob(th, obs, actions)))(theta)

    return reduce_live_blocks(block, traj, jax.lax.stop_gradient(coef), jnp.zeros_like(theta))


def gpomdp(policy: Policy, theta, traj: Trajectories, gamma: float, weights=None) -> jax.Array:
    """GPOMDP estimate ``1/B sum_tau w(tau) sum_t grad log pi_theta(a_t|s_t) G_t``, f32[d].

    ``weights`` (f32[B], default 1) are per-episode multipliers treated as constants (importance weights).
    """
    num_episodes = traj.mask.shape[1]
    coef = discounted_rewards_to_go(traj.rewards, gamma) / num_episodes
    if weights is not None:
        coef = coef * weights
    return score_gradient(policy, theta, traj, coef)


def reinforce(policy: Policy, theta, traj: Trajectories, gamma: float) -> jax.Array:
    """REINFORCE estimate ``1/B sum_tau (sum_t grad log pi_theta(a_t|s_t)) R(tau)``, f32[d]."""
    discounted_return = discounted_rewards_to_go(traj.rewards, gamma)[:1]  # R(tau) = G_0
    coef = jnp.broadcast_to(discounted_return, traj.mask.shape) / traj.mask.shape[1]
    return score_gradient(policy, theta, traj, coef)


def per_step_log_ratios(policy: Policy, theta, theta_prev, traj: Trajectories) -> jax.Array:
    """``log pi_{theta_prev}(a_t|s_t) - log pi_theta(a_t|s_t)`` at every live step, f32[H, B] (0 elsewhere)."""
    horizon, num_episodes = traj.mask.shape
    steps = jnp.broadcast_to(jnp.arange(horizon)[:, None], traj.mask.shape)

    def block(obs, actions, mask, t):  # padded steps have t = 0 and mask = 0: they add nothing
        diff = mask * (policy.log_prob(theta_prev, obs, actions) - policy.log_prob(theta, obs, actions))
        return jnp.zeros((horizon, num_episodes)).at[t[:, 0]].add(diff)

    return reduce_live_blocks(block, traj, steps, jnp.zeros((horizon, num_episodes)))


IMPORTANCE_WEIGHTS = ("trajectory", "per_step")


def page_pg_estimate(policy: Policy, theta, theta_prev, v_prev, traj: Trajectories, gamma: float,
                     importance_weights: str = "trajectory") -> jax.Array:
    """PAGE-PG small-batch step ``v_t = v_{t-1} + g_B(theta_t) - g_B^w(theta_{t-1})``, f32[d].

    ``traj`` is sampled at ``theta_t = theta``. ``importance_weights`` picks the estimator of
    ``g_B^w(theta_{t-1})``, both unbiased for ``g(theta_{t-1})``:

    * ``"trajectory"``: ``1/B sum_tau w(tau) g(tau | theta_{t-1})`` with the whole-trajectory weight
      ``w(tau)`` of ``log_importance_weights`` (PAGE-PG's Eq. (5); ByzPG's App. A.1);
    * ``"per_step"``: GPOMDP with truncated weights, ``1/B sum_tau sum_h w_{0:h} gamma^h r_h
      sum_{t <= h} grad log pi_{theta_{t-1}}(a_t|s_t)`` with ``w_{0:h} = prod_{t <= h} pi_{t-1}(a_t|s_t) /
      pi_t(a_t|s_t)`` (Xu et al., 2020, SRVR-PG): each reward is weighted only by the actions that led to it,
      which keeps the variance bounded on long episodes.

    Weights are exponentiated from log space only at the end. Both GPOMDP terms are taken in one pass over
    the live blocks.
    """
    if importance_weights not in IMPORTANCE_WEIGHTS:
        raise ValueError(f"importance_weights must be one of {IMPORTANCE_WEIGHTS}, got {importance_weights!r}")
    num_episodes = traj.mask.shape[1]
    coef_now = discounted_rewards_to_go(traj.rewards, gamma) / num_episodes
    if importance_weights == "trajectory":
        coef_prev = coef_now * jnp.exp(log_importance_weights(policy, theta, theta_prev, traj))
    else:
        step_weights = jnp.exp(jnp.cumsum(per_step_log_ratios(policy, theta, theta_prev, traj), axis=0))
        discounts = gamma ** jnp.arange(traj.rewards.shape[0], dtype=jnp.float32)[:, None]
        weighted = step_weights * discounts * traj.rewards / num_episodes
        coef_prev = jnp.flip(jnp.cumsum(jnp.flip(weighted, 0), axis=0), 0)

    def block(obs, actions, mask, coefs):
        c_now, c_prev = coefs

        def surrogate(th, th_prev):  # separable: d/d th gives g(theta), d/d th_prev gives g^w(theta_prev)
            now = jnp.sum(mask * c_now * policy.log_prob(th, obs, actions))
            return now + jnp.sum(mask * c_prev * policy.log_prob(th_prev, obs, actions))

        g_now, g_before = jax.grad(surrogate, argnums=(0, 1))(theta, theta_prev)
        return g_now - g_before

    coefs = jax.lax.stop_gradient((coef_now, coef_prev))
    return v_prev + reduce_live_blocks(block, traj, coefs, jnp.zeros_like(theta))
