"""Twin delayed DDPG (TD3, Fujimoto et al. 2018) as one jitted function.

``make_train(config, env, env_params) -> train(key) -> TrainOutput``: ``num_envs`` vectorized environments step
together; transitions go to a pytree ring buffer inside the ``lax.scan``; after ``learning_starts`` steps each
iteration takes ``gradient_steps`` critic updates with target policy smoothing and clipped double-Q targets, and
updates the actor and the (Polyak) target networks every ``policy_frequency`` critic updates. Actions live in
the unit box and are scaled to the environment's ``Box`` bounds, so arbitrary bounds work.
``critic_loss`` and ``actor_loss`` are public: RGIA differentiates the critic's TD loss.
"""

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

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
from fedjax_attacks.validation import check_flag, check_in_range


@dataclasses.dataclass(frozen=True)
class TD3Config:
    """TD3 hyperparameters; defaults are CleanRL's ``td3_continuous_action``.

    Noise scales are in the unit action box (CleanRL's are multiplied by the action scale, the same thing).
    Integer fields, ``hidden`` and ``normalize_rewards`` are static; the float fields may be traced (vmap over
    hyperparameters).

    Two options (off by default, CleanRL has neither) for rewards of unknown, heavy-tailed scale:
    ``normalize_rewards`` divides the rewards of every sampled minibatch by the standard deviation of the rewards
    in the replay buffer and clips them to ``[-reward_clip, reward_clip]``; ``preactivation_penalty`` adds
    ``preactivation_penalty * mean(z^2)`` over the actor's pre-``tanh`` outputs ``z`` to the actor loss, which
    keeps the actor off ``tanh``'s saturation (where its gradient vanishes and the policy freezes on a corner of
    the box whatever the state).
    """

    total_timesteps: int = 1_000_000
    num_envs: int = 1
    learning_rate: float = 3e-4
    buffer_size: int = 1_000_000
    gamma: float = 0.99
    tau: float = 0.005
    batch_size: int = 256
    policy_noise: float = 0.2
    exploration_noise: float = 0.1
    noise_clip: float = 0.5
    learning_starts: int = 25_000
    policy_frequency: int = 2
    gradient_steps: int = 1
    hidden: Sequence[int] = (256, 256)
    normalize_rewards: bool = False
    reward_clip: float = 10.0
    preactivation_penalty: float = 0.0

    @property
    def num_iterations(self) -> int:
        """Vectorized environment steps in the run."""
        return self.total_timesteps // self.num_envs

    def validate(self) -> None:
        """Raises ``ValueError`` on inconsistent settings."""
        replay.validate_off_policy(self, ("num_envs", "batch_size", "policy_frequency", "gradient_steps", "buffer_size"))
        for name in ("policy_noise", "exploration_noise", "noise_clip", "preactivation_penalty"):
            check_in_range(self, name, 0.0)
        check_flag(self, "normalize_rewards")
        check_in_range(self, "reward_clip", 0.0, low_open=True)


@struct.dataclass
class TD3State:
    """Learner state: actor and critic ``TrainState``s and their target parameters."""

    actor: TrainState
    critic: TrainState
    actor_target: Any
    critic_target: Any
    num_updates: chex.Array


@struct.dataclass
class TrainOutput:
    """What ``train`` returns: final learner state, replay buffer and per-iteration ``metrics``.

    ``metrics["episode_return"]``: mean return of episodes finished in that iteration (NaN if none);
    ``metrics["critic_loss"]``: mean critic loss of the iteration's updates (0 before ``learning_starts``).
    """

    learner: TD3State
    buffer: replay.ReplayBuffer
    metrics: dict


def td_targets(key: chex.PRNGKey, actor_fn: Callable, critic_fn: Callable, actor_target, critic_target,
               batch: Transition, *, gamma: float, policy_noise: float, noise_clip: float) -> chex.Array:
    """Clipped double-Q targets with target policy smoothing.

    ``a' = clip(pi_targ(s') + clip(N(0, policy_noise), -noise_clip, noise_clip), -1, 1)``,
    ``y = r + gamma (1 - terminated) min_i Q_targ_i(s', a')``.
    """
    next_action = actor_fn(actor_target, batch.next_obs)
    noise = jnp.clip(policy_noise * jax.random.normal(key, next_action.shape), -noise_clip, noise_clip)
    next_action = jnp.clip(next_action + noise, -1.0, 1.0)
    next_q = jnp.min(critic_fn(critic_target, batch.next_obs, next_action), axis=0)
    return batch.reward + gamma * (1.0 - batch.terminated.astype(jnp.float32)) * next_q


def critic_loss(critic_params, critic_fn: Callable, batch: Transition, targets: chex.Array) -> chex.Array:
    """Sum over the twin critics of the mean squared TD error ``(Q_i(s, a) - y)^2`` (targets held fixed)."""
    q = critic_fn(critic_params, batch.obs, batch.action)
    return jnp.sum(jnp.mean(jnp.square(q - jax.lax.stop_gradient(targets)[None]), axis=-1))


def actor_loss(actor_params, actor_fn: Callable, critic_fn: Callable, critic_params, obs: chex.Array) -> chex.Array:
    """Deterministic policy gradient objective ``-mean Q_1(s, pi(s))``."""
    return -jnp.mean(critic_fn(critic_params, obs, actor_fn(actor_params, obs))[0])


def make_train(config: TD3Config, env, env_params) -> Callable[[chex.PRNGKey], TrainOutput]:
    """Builds ``train(key) -> TrainOutput``: a whole TD3 run as one jittable, vmappable function
    (``make_trainer(...).run``)."""
    return make_trainer(config, env, env_params).run


class TD3Steps(NamedTuple):
    """TD3 on an environment whose parameters are an argument of every call (they may change between calls
    without recompiling, e.g. a simulator rebuilt from new data):

    * ``init(key, env_params) -> carry``: fresh networks, an empty replay buffer, ``num_envs`` reset environments;
    * ``step(carry, env_params) -> (carry, metrics)``: one iteration (``num_envs`` environment steps, then
      ``gradient_steps`` updates once ``learning_starts`` transitions are stored);
    * ``act(actor_params, obs) -> env_action``: the deterministic policy in the environment's action box;
    * ``unit_act(actor_params, obs) -> unit_action``: the same in the unit box ``[-1, 1]``.

    ``carry`` is ``(TD3State, ReplayBuffer, env_state, obs, key, iteration)``; ``metrics``: ``episode_return``
    (mean of the episodes that ended, NaN if none), ``episodes`` (their count), ``reward`` (mean step reward) and
    ``critic_loss`` (0 before learning starts).
    """

    init: Callable
    step: Callable
    act: Callable
    unit_act: Callable


def make_steps(config: TD3Config, env, spec_params=None) -> TD3Steps:
    """TD3's ``init`` / ``step`` / ``act`` on ``env`` with the environment parameters passed at every call.

    ``spec_params``: the parameters the action and observation spaces are read with (``None`` if ``env``'s spaces
    do not depend on them).

    Raises:
      ValueError: on an invalid config or a discrete action space.
    """
    config.validate()
    spec = env_lib.spec(env, spec_params)
    if spec.discrete:
        raise ValueError("TD3 needs a continuous (Box) action space")
    actor_net = networks.DeterministicActor(spec.num_actions, tuple(config.hidden))
    critic_net = networks.TwinCritic(tuple(config.hidden))
    venv = wrappers.VecEnv(wrappers.LogWrapper(env), config.num_envs)
    capacity = min(config.buffer_size, config.total_timesteps)
    tx = optax.adam(config.learning_rate)

    def scaled_rewards(batch: Transition, buffer: replay.ReplayBuffer) -> Transition:
        if not config.normalize_rewards:
            return batch
        valid = jnp.arange(buffer.capacity) < buffer.size
        count = jnp.maximum(jnp.sum(valid), 1)
        rewards = buffer.data.reward
        mean = jnp.sum(jnp.where(valid, rewards, 0.0)) / count
        std = jnp.sqrt(jnp.sum(jnp.where(valid, jnp.square(rewards - mean), 0.0)) / count)
        scaled = jnp.clip(batch.reward / jnp.maximum(std, 1e-8), -config.reward_clip, config.reward_clip)
        return batch._replace(reward=scaled)

    def loss_of_actor(actor_params, critic_params, obs):
        loss = actor_loss(actor_params, actor_net.apply, critic_net.apply, critic_params, obs)
        if config.preactivation_penalty:
            _, pre = actor_net.apply(actor_params, obs, return_preactivation=True)
            loss = loss + config.preactivation_penalty * jnp.mean(jnp.square(pre))
        return loss

    def update(learner: TD3State, batch, k_noise):
        targets = td_targets(k_noise, actor_net.apply, critic_net.apply, learner.actor_target,
                             learner.critic_target, batch, gamma=config.gamma,
                             policy_noise=config.policy_noise, noise_clip=config.noise_clip)
        c_loss, c_grads = jax.value_and_grad(critic_loss)(learner.critic.params, critic_net.apply, batch, targets)
        critic = learner.critic.apply_gradients(grads=c_grads)
        learner = learner.replace(critic=critic, num_updates=learner.num_updates + 1)

        def policy_update(learner):
            a_grads = jax.grad(loss_of_actor)(learner.actor.params, learner.critic.params, batch.obs)
            actor = learner.actor.apply_gradients(grads=a_grads)
            polyak = lambda t, o: optax.incremental_update(o, t, config.tau)
            return learner.replace(actor=actor, actor_target=polyak(learner.actor_target, actor.params),
                                   critic_target=polyak(learner.critic_target, learner.critic.params))

        learner = jax.lax.cond(learner.num_updates % config.policy_frequency == 0, policy_update,
                               lambda l: l, learner)
        return learner, c_loss

    def step(carry, env_params):
        learner, buffer, env_state, obs, key, iteration = carry
        key, k_rand, k_noise, k_env, k_upd = jax.random.split(key, 5)
        explore = actor_net.apply(learner.actor.params, obs)
        explore = jnp.clip(explore + config.exploration_noise * jax.random.normal(k_noise, explore.shape), -1, 1)
        random = jax.random.uniform(k_rand, explore.shape, minval=-1.0, maxval=1.0)
        action = jnp.where(iteration * config.num_envs < config.learning_starts, random, explore)
        env_action = networks.scale_action(action, spec.action_low, spec.action_high)
        next_obs, env_state, reward, terminated, truncated, info = venv.step(k_env, env_state, env_action, env_params)
        buffer = replay.add(buffer, Transition(obs, action, reward.astype(jnp.float32),
                                               info["final_observation"], terminated))

        # minibatches sampled outside the cond: a cond closing over the buffer copies all of it every iteration
        k_samples, k_noises = jnp.swapaxes(jax.vmap(jax.random.split)(jax.random.split(k_upd, config.gradient_steps)),
                                           0, 1)
        batches = jax.vmap(lambda k: scaled_rewards(replay.sample(k, buffer, config.batch_size), buffer))(k_samples)

        def learn(learner):
            learner, losses = jax.lax.scan(lambda l, xs: update(l, *xs), learner, (batches, k_noises))
            return learner, jnp.mean(losses)

        learner, c_loss = jax.lax.cond((iteration + 1) * config.num_envs >= config.learning_starts, learn,
                                       lambda l: (l, jnp.zeros(())), learner)
        ep_return, episodes = wrappers.episode_stats(info)
        metrics = {"episode_return": ep_return, "episodes": episodes, "reward": jnp.mean(reward),
                   "critic_loss": c_loss}
        return (learner, buffer, env_state, next_obs, key, iteration + 1), metrics

    def init(key: chex.PRNGKey, env_params):
        key, k_actor, k_critic, k_env = jax.random.split(key, 4)
        obs, env_state = venv.reset(k_env, env_params)
        dummy_action = jnp.zeros((config.num_envs, spec.num_actions))
        actor_params = actor_net.init(k_actor, obs)
        critic_params = critic_net.init(k_critic, obs, dummy_action)
        learner = TD3State(
            actor=TrainState.create(apply_fn=actor_net.apply, params=actor_params, tx=tx),
            critic=TrainState.create(apply_fn=critic_net.apply, params=critic_params, tx=tx),
            actor_target=actor_params, critic_target=critic_params, num_updates=jnp.zeros((), jnp.int32))
        example = Transition(obs[0], dummy_action[0], jnp.zeros(()), obs[0], jnp.zeros((), bool))
        buffer = replay.init(capacity, example)
        return learner, buffer, env_state, obs, key, jnp.zeros((), jnp.int32)

    def unit_act(actor_params, obs):
        return actor_net.apply(actor_params, obs)

    def act(actor_params, obs):
        return networks.scale_action(unit_act(actor_params, obs), spec.action_low, spec.action_high)

    return TD3Steps(init, step, act, unit_act)


def make_trainer(config: TD3Config, env, env_params) -> Trainer:
    """Builds TD3 in the run protocol: ``Trainer(init, step, num_steps, finish, params=env_params)``, one step =
    one iteration (``num_envs`` env steps, then ``gradient_steps`` updates once learning has started); ``init`` and
    ``step`` are ``make_steps``' (environment parameters at every call).

    Raises:
      ValueError: on an invalid config or a discrete action space.
    """
    steps = make_steps(config, env, env_params)

    def finish(carry, metrics) -> TrainOutput:
        learner, buffer = carry[:2]
        return TrainOutput(learner=learner, buffer=buffer, metrics=metrics)

    return Trainer(steps.init, steps.step, config.num_iterations, finish, params=env_params, unit="env step",
                   unit_scale=config.num_envs, config=config)


def make_policy(config: TD3Config, env, env_params, actor_params) -> Callable[[chex.PRNGKey, chex.Array], chex.Array]:
    """Exported deterministic policy ``policy(key, obs) -> env_action`` from trained actor parameters."""
    spec = env_lib.spec(env, env_params)
    actor_net = networks.DeterministicActor(spec.num_actions, tuple(config.hidden))

    def policy(key, obs):
        del key
        return networks.scale_action(actor_net.apply(actor_params, obs), spec.action_low, spec.action_high)

    return policy
