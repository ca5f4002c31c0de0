"""Double DQN (van Hasselt et al. 2016) as one jitted function.

``make_train(config, env, env_params) -> train(key) -> TrainOutput``: epsilon-greedy acting in ``num_envs``
vectorized environments with a linearly decaying epsilon, a pytree ring replay buffer inside the ``lax.scan``,
an update every ``train_frequency`` environment steps after ``learning_starts``, and a (soft) target-network
update every ``target_network_frequency`` steps. ``grad_hook(key, grads) -> grads`` optionally transforms every
update's gradient before the optimizer (RGIA's DP-noise victim adds the defense's noise there). ``td_loss`` is
public: RGIA inverts its gradients and BadRL-M ranks states with a trained Q-network.
"""

import dataclasses
from typing import Any, Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training.train_state import TrainState

from fedjax_attacks.rl import env as env_lib
from fedjax_attacks.rl import networks, replay, wrappers
from fedjax_attacks.rl.replay import Transition
from fedjax_attacks.runner import Trainer
from fedjax_attacks.validation import check_in_range


@dataclasses.dataclass(frozen=True)
class DQNConfig:
    """DQN hyperparameters; defaults are CleanRL's ``dqn`` (classic control), with double-Q targets on.

    Integer and boolean fields and ``hidden`` are static; the float fields may be traced (vmap over them).
    """

    total_timesteps: int = 500_000
    num_envs: int = 1
    learning_rate: float = 2.5e-4
    buffer_size: int = 10_000
    gamma: float = 0.99
    tau: float = 1.0
    target_network_frequency: int = 500
    batch_size: int = 128
    start_e: float = 1.0
    end_e: float = 0.05
    exploration_fraction: float = 0.5
    learning_starts: int = 10_000
    train_frequency: int = 10
    double_q: bool = True
    hidden: Sequence[int] = (120, 84)

    @property
    def num_iterations(self) -> int:
        """Vectorized environment steps in the run."""
        return self.total_timesteps // self.num_envs

    def validate(self) -> None:
        """Raises ``ValueError`` on inconsistent settings."""
        replay.validate_off_policy(self, ("num_envs", "batch_size", "train_frequency", "target_network_frequency", "buffer_size"))
        check_in_range(self, "exploration_fraction", 0.0, 1.0, low_open=True)
        for name in ("start_e", "end_e"):
            check_in_range(self, name, 0.0, 1.0)


@struct.dataclass
class TrainOutput:
    """Final Q-network ``TrainState``, target parameters, replay buffer and per-iteration ``metrics``.

    ``metrics["episode_return"]``: mean return of episodes finished in that iteration (NaN if none);
    ``metrics["td_loss"]``: the iteration's TD loss (0 when no update ran).
    """

    q_state: TrainState
    target_params: Any
    buffer: replay.ReplayBuffer
    metrics: dict


def td_loss(params, target_params, q_fn: Callable, batch: Transition, *, gamma: float,
            double_q: bool = True) -> chex.Array:
    """Mean squared TD error ``(Q(s, a) - y)^2`` with ``y`` held fixed.

    ``y = r + gamma (1 - terminated) Q_targ(s', a*)`` with ``a* = argmax_a Q(s', a)`` (double DQN) or
    ``argmax_a Q_targ(s', a)`` (vanilla DQN).
    """
    next_q_target = q_fn(target_params, batch.next_obs)
    next_q_select = q_fn(params, batch.next_obs) if double_q else next_q_target
    best = jnp.argmax(next_q_select, axis=-1)
    next_q = jnp.take_along_axis(next_q_target, best[..., None], axis=-1)[..., 0]
    y = batch.reward + gamma * (1.0 - batch.terminated.astype(jnp.float32)) * next_q
    q = jnp.take_along_axis(q_fn(params, batch.obs), batch.action[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jnp.mean(jnp.square(q - jax.lax.stop_gradient(y)))


def epsilon(config: DQNConfig, env_steps: chex.Array) -> chex.Array:
    """Linear decay from ``start_e`` to ``end_e`` over ``exploration_fraction * total_timesteps`` steps."""
    duration = config.exploration_fraction * config.total_timesteps
    slope = (config.end_e - config.start_e) / duration
    return jnp.maximum(slope * env_steps + config.start_e, config.end_e)


GradHook = Callable[[chex.PRNGKey, Any], Any]


def make_train(config: DQNConfig, env, env_params,
               grad_hook: GradHook | None = None) -> Callable[[chex.PRNGKey], TrainOutput]:
    """Builds ``train(key) -> TrainOutput``: a whole DQN run as one jittable, vmappable function
    (``make_trainer(...).run``)."""
    return make_trainer(config, env, env_params, grad_hook).run


def make_trainer(config: DQNConfig, env, env_params, grad_hook: GradHook | None = None) -> Trainer:
    """Builds DQN in the run protocol: ``Trainer(init, step, num_steps, finish, params=env_params)`` (``init(key,
    env_params)``, ``step(carry, env_params)``), one step = one iteration
    (``num_envs`` env steps, an update every ``train_frequency`` env steps once learning has started).

    ``grad_hook(key, grads) -> grads``: a pure function applied to each update's TD-loss gradient (a pytree like
    the Q-network's parameters) before Adam, with a fresh key per update (folded from the update's key, so a run
    without a hook draws exactly what it drew before); it may close over traced values (e.g. a noise variance
    under ``jax.vmap``). ``None``: the plain gradient.

    Raises:
      ValueError: on an invalid config or a continuous action space.
    """
    config.validate()
    spec = env_lib.spec(env, env_params)
    if not spec.discrete:
        raise ValueError("DQN needs a discrete action space")
    q_net = networks.QNetwork(spec.num_actions, tuple(config.hidden))
    venv = wrappers.VecEnv(wrappers.LogWrapper(env), config.num_envs)
    capacity = min(config.buffer_size, config.total_timesteps)
    tx = optax.adam(config.learning_rate)
    # Updates and target syncs happen on the iterations where the env-step counter crosses a multiple.
    crosses = lambda step, every: (step + 1) * config.num_envs // every > step * config.num_envs // every

    def iteration(carry, env_params):
        q_state, target_params, buffer, env_state, obs, key, step = carry
        key, k_eps, k_rand, k_env, k_upd = jax.random.split(key, 5)
        greedy = jnp.argmax(q_net.apply(q_state.params, obs), axis=-1)
        random = jax.random.randint(k_rand, greedy.shape, 0, spec.num_actions)
        explore = jax.random.uniform(k_eps, greedy.shape) < epsilon(config, step * config.num_envs)
        action = jnp.where(explore, random, greedy)
        next_obs, env_state, reward, terminated, truncated, info = venv.step(k_env, env_state, action, env_params)
        buffer = replay.add(buffer, Transition(obs, action, reward.astype(jnp.float32),
                                               info["final_observation"], terminated))
        learning = (step + 1) * config.num_envs >= config.learning_starts

        # sampled outside the cond: a cond closing over the buffer copies all of it every iteration
        batch = replay.sample(k_upd, buffer, config.batch_size)

        def learn(q_state):
            loss, grads = jax.value_and_grad(td_loss)(q_state.params, target_params, q_net.apply, batch,
                                                      gamma=config.gamma, double_q=config.double_q)
            if grad_hook is not None:
                grads = grad_hook(jax.random.fold_in(k_upd, 1), grads)
            return q_state.apply_gradients(grads=grads), loss

        q_state, loss = jax.lax.cond(jnp.logical_and(learning, crosses(step, config.train_frequency)), learn,
                                     lambda s: (s, jnp.zeros(())), q_state)
        sync = jnp.logical_and(learning, crosses(step, config.target_network_frequency))
        target_params = jax.tree.map(
            lambda t, o: jnp.where(sync, config.tau * o + (1.0 - config.tau) * t, t), target_params, q_state.params)
        ep_return, _ = wrappers.episode_stats(info)
        carry = (q_state, target_params, buffer, env_state, next_obs, key, step + 1)
        return carry, {"episode_return": ep_return, "td_loss": loss}

    def init(key: chex.PRNGKey, env_params):
        key, k_init, k_env = jax.random.split(key, 3)
        obs, env_state = venv.reset(k_env, env_params)
        params = q_net.init(k_init, obs)
        q_state = TrainState.create(apply_fn=q_net.apply, params=params, tx=tx)
        example = Transition(obs[0], jnp.zeros((), jnp.int32), jnp.zeros(()), obs[0], jnp.zeros((), bool))
        return q_state, params, replay.init(capacity, example), env_state, obs, key, jnp.zeros((), jnp.int32)

    def finish(carry, metrics) -> TrainOutput:
        q_state, target_params, buffer = carry[:3]
        return TrainOutput(q_state=q_state, target_params=target_params, buffer=buffer, metrics=metrics)

    return Trainer(init, iteration, config.num_iterations, finish, params=env_params, unit="env step",
                   unit_scale=config.num_envs, config=config)


def make_policy(config: DQNConfig, env, env_params, params) -> Callable[[chex.PRNGKey, chex.Array], chex.Array]:
    """Exported greedy policy ``policy(key, obs) -> action`` from trained Q-network parameters."""
    spec = env_lib.spec(env, env_params)
    q_net = networks.QNetwork(spec.num_actions, tuple(config.hidden))

    def policy(key, obs):
        del key
        return jnp.argmax(q_net.apply(params, obs), axis=-1)

    return policy
