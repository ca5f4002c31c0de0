"""Proximal policy optimization (Schulman et al. 2017) as one jitted function, with poisoning hooks.

``make_train(config, env, env_params, poison=..., rollout_hook=..., network=None) -> train(key) -> TrainOutput``
follows PureJaxRL: ``num_envs`` vectorized environments, ``num_steps`` per rollout, GAE, ``update_epochs`` epochs
of ``num_minibatches`` clipped-objective minibatch updates, all inside one ``lax.scan``; ``jax.vmap(train)(keys)``
trains many seeds at once. Discrete (``Categorical``) and continuous (``DiagGaussian`` in the unit box, scaled to
the ``Box`` bounds) action spaces both work. The network is pluggable: ``network`` is any flax module
``obs[..., *obs_shape] -> (distribution, value)`` (e.g. ``networks.ConvActorCritic`` for image observations);
``None`` is the MLP ``ActorCritic`` of ``make_network``.

Poisoning hooks (SleeperNets, TrojDRL-W, BadRL-M); the defaults are identities that trace to nothing:

* outer loop: ``poison(batch, train_state, key) -> batch`` runs on every rollout ``Batch`` after collection and
  before GAE and the update. It may rewrite any field but must keep every shape and dtype (checked at trace
  time); to recompute values and log-probs of changed observations use
  ``evaluate_actions(train_state, obs, actions)``. It may also return ``(batch, metrics)``: a dict of scalars
  (e.g. how many states it poisoned) that joins the update's ``TrainOutput.metrics``.
* inner loop: ``RolloutHook(init, observe, reward)`` runs inside each rollout step:
  ``observe(key, hook_state, obs, train_state) -> (obs, hook_state)`` changes the batched observation
  ``[num_envs, ...]`` before the agent acts on it (and it is stored in the batch);
  ``reward(hook_state, action, reward) -> (reward, hook_state)`` changes the reward the agent receives for the
  action it took. ``init() -> hook_state`` gives the initial pytree state (a step counter, a mask, a running
  threshold); it is carried across the whole run and returned in ``TrainOutput.hook_state``.
"""

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training.train_state import TrainState

from fedjax_attacks.rl import env as env_lib
from fedjax_attacks.rl import gae as gae_lib
from fedjax_attacks.rl import networks, wrappers
from fedjax_attacks.runner import Trainer
from fedjax_attacks.validation import check_count, check_in_range, check_layers, check_rate


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO hyperparameters; defaults are PureJaxRL's CartPole / CleanRL's classic-control settings.

    ``total_timesteps`` is rounded down to whole updates of ``num_envs * num_steps`` environment steps.
    Integer and boolean fields and ``hidden``/``activation`` are static. The float fields (``learning_rate``,
    ``gamma``, ``gae_lambda``, ``clip_eps``, ``ent_coef``, ``vf_coef``, ``max_grad_norm``) may be traced, so a
    sweep is ``jax.vmap(lambda lr, k: make_train(replace(config, learning_rate=lr), env, p)(k))(lrs, keys)``.
    """

    total_timesteps: int = 500_000
    num_envs: int = 4
    num_steps: int = 128
    learning_rate: float = 2.5e-4
    anneal_lr: bool = True
    update_epochs: int = 4
    num_minibatches: int = 4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_eps: float = 0.2
    clip_value_loss: bool = True
    normalize_advantages: bool = True
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    hidden: Sequence[int] = (64, 64)
    activation: str = "tanh"
    normalize_observations: bool = False

    @property
    def batch_size(self) -> int:
        """Environment steps per update."""
        return self.num_envs * self.num_steps

    @property
    def num_updates(self) -> int:
        """Number of rollout-and-update iterations."""
        return self.total_timesteps // self.batch_size

    def validate(self) -> None:
        """Raises ``ValueError`` on inconsistent settings."""
        for name in ("total_timesteps", "num_envs", "num_steps", "update_epochs", "num_minibatches"):
            check_count(self, name)
        check_rate(self, "learning_rate")
        if self.num_updates < 1:
            raise ValueError(f"total_timesteps={self.total_timesteps} is less than one batch ({self.batch_size})")
        if self.batch_size % self.num_minibatches:
            raise ValueError(f"num_envs * num_steps = {self.batch_size} is not divisible by "
                             f"num_minibatches = {self.num_minibatches}")
        for name in ("gamma", "gae_lambda"):
            check_in_range(self, name, 0.0, 1.0)
        check_rate(self, "clip_eps")
        check_rate(self, "max_grad_norm")
        check_in_range(self, "ent_coef", 0.0)
        check_in_range(self, "vf_coef", 0.0)
        check_layers(self)
        networks.activation(self.activation)


class Batch(NamedTuple):
    """One rollout, time-major ``[num_steps, num_envs, ...]``; what ``poison`` receives and returns.

    Attributes:
      obs: observation the agent acted on (after the inner-loop hook).
      actions: sampled actions: int for discrete, unit-box (unclipped) Gaussian samples for continuous.
      rewards: rewards the agent received (after the inner-loop hook).
      terminated, truncated: bool flags of the step (``truncated``: time limit, bootstrapped).
      values: critic value of ``obs`` at collection time.
      log_probs: log-probability of ``actions`` under the collecting policy.
      bootstrap_values: critic value of the true next observation (before auto-reset); GAE reads it only at
        episode ends and at the last step, otherwise it uses ``values[t + 1]``.
    """

    obs: chex.Array
    actions: chex.Array
    rewards: chex.Array
    terminated: chex.Array
    truncated: chex.Array
    values: chex.Array
    log_probs: chex.Array
    bootstrap_values: chex.Array


class RolloutHook(NamedTuple):
    """Inner-loop transform of (observation, reward) during the rollout; see the module docstring."""

    init: Callable[[], Any]
    observe: Callable[[chex.PRNGKey, Any, chex.Array, TrainState], tuple[chex.Array, Any]]
    reward: Callable[[Any, chex.Array, chex.Array], tuple[chex.Array, Any]]


def no_poison(batch: Batch, train_state: TrainState, key: chex.PRNGKey) -> Batch:
    """The default outer-loop poison: returns ``batch`` unchanged."""
    del train_state, key
    return batch


IDENTITY_HOOK = RolloutHook(
    init=lambda: (),
    observe=lambda key, hook_state, obs, train_state: (obs, hook_state),
    reward=lambda hook_state, action, reward: (reward, hook_state),
)


@struct.dataclass
class TrainOutput:
    """What ``train`` returns.

    Attributes:
      train_state: final ``TrainState`` (``params`` are the policy parameters to export).
      env_state: final vectorized environment state (holds the observation moments if normalizing).
      hook_state: final state of the rollout hook.
      metrics: per-update arrays ``[num_updates]``: ``episode_return`` (mean return of episodes finished in the
        rollout, NaN if none), ``episodes`` (their count), ``loss``, ``policy_loss``, ``value_loss``,
        ``entropy``, ``approx_kl``, ``clip_fraction``.
    """

    train_state: TrainState
    env_state: Any
    hook_state: Any
    metrics: dict


def make_network(config: PPOConfig, spec: env_lib.EnvSpec) -> networks.ActorCritic:
    """The actor-critic network PPO trains for an environment with this spec."""
    return networks.ActorCritic(num_actions=spec.num_actions, discrete=spec.discrete,
                                hidden=tuple(config.hidden), activation=config.activation)


def evaluate_actions(train_state: TrainState, obs: chex.Array, actions: chex.Array):
    """``(log_probs, values, entropy)`` of ``actions`` at ``obs`` under ``train_state``'s current policy."""
    dist, values = train_state.apply_fn(train_state.params, obs)
    return dist.log_prob(actions), values, dist.entropy()


def loss(params, apply_fn: Callable, batch: Batch, advantages: chex.Array, targets: chex.Array, *,
         clip_eps: float, vf_coef: float, ent_coef: float, clip_value_loss: bool = True,
         normalize_advantages: bool = True):
    """PPO loss on a flat minibatch: ``policy_loss + vf_coef * value_loss - ent_coef * entropy``.

    ``policy_loss = -mean(min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A))``; ``value_loss`` is
    ``0.5 * mean(max((V - target)^2, (V_clipped - target)^2))`` with ``V_clipped`` within ``eps`` of the
    collection-time value (or the plain squared error when ``clip_value_loss`` is False).
    Returns ``(total, aux)`` with the components, ``approx_kl`` and ``clip_fraction`` in ``aux``.
    """
    dist, values = apply_fn(params, batch.obs)
    log_probs = dist.log_prob(batch.actions)
    if normalize_advantages:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    log_ratio = log_probs - batch.log_probs
    ratio = jnp.exp(log_ratio)
    policy_loss = -jnp.mean(jnp.minimum(ratio * advantages,
                                        jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages))
    value_err = jnp.square(values - targets)
    if clip_value_loss:
        clipped = batch.values + jnp.clip(values - batch.values, -clip_eps, clip_eps)
        value_err = jnp.maximum(value_err, jnp.square(clipped - targets))
    value_loss = 0.5 * jnp.mean(value_err)
    entropy = jnp.mean(dist.entropy())
    total = policy_loss + vf_coef * value_loss - ent_coef * entropy
    aux = {"policy_loss": policy_loss, "value_loss": value_loss, "entropy": entropy,
           "approx_kl": jnp.mean((ratio - 1.0) - log_ratio),
           "clip_fraction": jnp.mean((jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32))}
    return total, aux


def make_env(config: PPOConfig, env):
    """The vectorized, logged (and optionally observation-normalized) environment PPO trains on."""
    venv = wrappers.VecEnv(wrappers.LogWrapper(env), config.num_envs)
    return wrappers.NormalizeObservation(venv) if config.normalize_observations else venv


def make_train(config: PPOConfig, env, env_params, poison: Callable = no_poison,
               rollout_hook: RolloutHook = IDENTITY_HOOK,
               network: nn.Module | None = None) -> Callable[[chex.PRNGKey], TrainOutput]:
    """Builds ``train(key) -> TrainOutput``: a whole PPO run as one jittable, vmappable function
    (``make_trainer(...).run``; arguments as there)."""
    return make_trainer(config, env, env_params, poison, rollout_hook, network).run


def make_learn(config: PPOConfig) -> Callable[[TrainState, Batch, chex.PRNGKey], tuple[TrainState, dict]]:
    """PPO's learning phase: ``learn(train_state, batch, key) -> (train_state, losses)``.

    ``batch``: a ``Batch`` of ``[num_steps, num_envs]`` transitions. Computes the GAE advantages ``A_t`` and
    value targets, then ``update_epochs`` epochs of ``num_minibatches`` shuffled minibatches, each one clipped
    surrogate step (``loss``); ``losses`` holds every minibatch's loss terms ``[update_epochs, num_minibatches]``.
    """
    minibatch_size = config.batch_size // config.num_minibatches

    def update_minibatch(train_state, minibatch):
        batch, advantages, targets = minibatch
        (total, aux), grads = jax.value_and_grad(loss, has_aux=True)(
            train_state.params, train_state.apply_fn, batch, advantages, targets, clip_eps=config.clip_eps,
            vf_coef=config.vf_coef, ent_coef=config.ent_coef, clip_value_loss=config.clip_value_loss,
            normalize_advantages=config.normalize_advantages)
        return train_state.apply_gradients(grads=grads), {"loss": total, **aux}

    def update_epoch(carry, _):
        train_state, data, key = carry
        key, k_perm = jax.random.split(key)
        perm = jax.random.permutation(k_perm, config.batch_size)
        shuffled = jax.tree.map(
            lambda x: x.reshape((config.batch_size,) + x.shape[2:])[perm].reshape(
                (config.num_minibatches, minibatch_size) + x.shape[2:]), data)
        train_state, metrics = jax.lax.scan(update_minibatch, train_state, shuffled)
        return (train_state, data, key), metrics

    def learn(train_state, batch, key):
        advantages, targets = gae_lib.gae(batch.rewards, batch.values, batch.bootstrap_values,
                                          batch.terminated, batch.truncated, config.gamma, config.gae_lambda)
        (train_state, _, _), losses = jax.lax.scan(
            update_epoch, (train_state, (batch, advantages, targets), key), None, config.update_epochs)
        return train_state, losses

    return learn


class PPOSteps(NamedTuple):
    """PPO on an environment whose parameters are an argument of every call (they may change between calls
    without recompiling): ``init(key, env_params) -> carry``, ``step(carry, env_params) -> (carry, metrics)`` (one
    update: a rollout of ``num_steps`` x ``num_envs`` env steps, then the epochs) and ``act(params, obs) ->
    env_action`` (the distribution's mode, in the environment's action space). ``carry`` is ``(TrainState,
    env_state, obs, hook_state, key)``; ``metrics``: ``episode_return``, ``episodes``, ``reward`` (mean step
    reward), the mean losses and the poisoning metrics."""

    init: Callable
    step: Callable
    act: Callable


def make_steps(config: PPOConfig, env, spec_params=None, poison: Callable = no_poison,
               rollout_hook: RolloutHook = IDENTITY_HOOK, network: nn.Module | None = None) -> PPOSteps:
    """PPO's ``init`` / ``step`` / ``act`` with the environment parameters passed at every call (arguments as
    ``make_trainer``'s; ``spec_params``: the parameters the spaces are read with).

    Raises:
      ValueError: as ``make_trainer``.
    """
    config.validate()
    spec = env_lib.spec(env, spec_params)
    network = _checked_network(config, spec, network)
    venv = make_env(config, env)
    to_env_action = _action_mapper(spec)
    num_updates = config.num_updates

    def schedule(count):
        frac = 1.0 - (count // (config.num_minibatches * config.update_epochs)) / num_updates
        return config.learning_rate * frac

    lr = schedule if config.anneal_lr else config.learning_rate
    tx = optax.chain(optax.clip_by_global_norm(config.max_grad_norm), optax.adam(lr, eps=1e-5))
    learn = make_learn(config)

    def rollout_step(carry, env_params):
        train_state, env_state, obs, hook_state, key = carry
        key, k_hook, k_act, k_env = jax.random.split(key, 4)
        obs, hook_state = rollout_hook.observe(k_hook, hook_state, obs, train_state)
        dist, value = train_state.apply_fn(train_state.params, obs)
        action = dist.sample(k_act)
        log_prob = dist.log_prob(action)
        next_obs, env_state, reward, terminated, truncated, info = venv.step(
            k_env, env_state, to_env_action(action), env_params)
        reward, hook_state = rollout_hook.reward(hook_state, action, reward.astype(jnp.float32))
        _, bootstrap_value = train_state.apply_fn(train_state.params, info["final_observation"])
        transition = Batch(obs, action, reward, terminated, truncated, value, log_prob, bootstrap_value)
        return (train_state, env_state, next_obs, hook_state, key), (transition, info)

    def update_step(carry, env_params):
        (train_state, env_state, obs, hook_state, key), (batch, info) = jax.lax.scan(
            lambda c, _: rollout_step(c, env_params), carry, None, config.num_steps)
        key, k_poison, k_epochs = jax.random.split(key, 3)
        batch, poison_metrics = _check_poisoned(batch, poison(batch, train_state, k_poison))
        train_state, losses = learn(train_state, batch, k_epochs)
        episode_return, episodes = wrappers.episode_stats(info)
        metrics = {"episode_return": episode_return, "episodes": episodes, "reward": jnp.mean(batch.rewards),
                   **jax.tree.map(jnp.mean, losses), **poison_metrics}
        return (train_state, env_state, obs, hook_state, key), metrics

    def init(key: chex.PRNGKey, env_params):
        key, k_init, k_env = jax.random.split(key, 3)
        obs, env_state = venv.reset(k_env, env_params)
        params = network.init(k_init, obs)
        train_state = TrainState.create(apply_fn=network.apply, params=params, tx=tx)
        return train_state, env_state, obs, rollout_hook.init(), key

    def act(params, obs):
        dist, _ = network.apply(params, obs)
        return to_env_action(dist.mode())

    return PPOSteps(init, update_step, act)


def make_trainer(config: PPOConfig, env, env_params, poison: Callable = no_poison,
                 rollout_hook: RolloutHook = IDENTITY_HOOK, network: nn.Module | None = None) -> Trainer:
    """Builds PPO in the run protocol: ``Trainer(init, step, num_steps, finish, params=env_params)`` with one step
    = one update (a rollout of ``num_steps`` x ``num_envs`` env steps, then the epochs); ``run(key) -> TrainOutput``
    and ``run_with_progress(keys)`` (tqdm bar over env steps); ``init``/``step`` are ``make_steps``', so other
    environment parameters run in the same program (``run(key, params)``, a sweep over them).

    Args:
      config: hyperparameters (static).
      env, env_params: a gymnax-shaped environment (``rl.env.make``) and its parameters; the environment is
        wrapped here with ``LogWrapper`` and ``VecEnv`` (and ``NormalizeObservation`` if configured).
      poison: outer-loop ``poison(batch, train_state, key) -> batch`` or ``(batch, metrics)`` (default: identity).
      rollout_hook: inner-loop ``RolloutHook`` (default: identity).
      network: flax module mapping observations ``[..., *obs_shape]`` (any leading batch axes) to
        ``(distribution, value)``: a ``networks.Categorical`` with logits ``[..., num_actions]`` (discrete) or a
        ``networks.DiagGaussian`` in the unit box with mean and log_std ``[..., action_dim]`` (continuous), and
        ``value`` f32[...]; e.g. ``networks.ConvActorCritic`` for image observations. ``None``: the MLP
        ``make_network(config, spec)`` (``config.hidden`` and ``config.activation`` only apply to it).

    Raises:
      ValueError: on an invalid config, an unsupported action space, or a ``network`` whose output does not
        fit the environment (checked with ``jax.eval_shape``, nothing is computed).
    """
    steps = make_steps(config, env, env_params, poison, rollout_hook, network)

    def finish(carry, metrics) -> TrainOutput:
        train_state, env_state, _, hook_state, _ = carry
        return TrainOutput(train_state=train_state, env_state=env_state, hook_state=hook_state, metrics=metrics)

    return Trainer(steps.init, steps.step, config.num_updates, finish, params=env_params, unit="env step",
                   unit_scale=config.batch_size, config=config)


def make_policy(config: PPOConfig, env, env_params, params, obs_moments: wrappers.RunningMoments | None = None,
                deterministic: bool = True,
                network: nn.Module | None = None) -> Callable[[chex.PRNGKey, chex.Array], chex.Array]:
    """Exported policy ``policy(key, obs) -> env_action`` from trained ``params`` (for ``evaluate``).

    ``obs_moments``: the observation moments of a run with ``normalize_observations`` (from
    ``TrainOutput.env_state.moments``); ``deterministic`` uses the distribution's mode instead of sampling;
    ``network``: the one ``make_train`` trained ``params`` with (``None``: ``make_network``).
    """
    spec = env_lib.spec(env, env_params)
    network = _checked_network(config, spec, network)
    to_env_action = _action_mapper(spec)

    def policy(key, obs):
        if obs_moments is not None:
            obs = wrappers.normalize(obs_moments, obs)
        dist, _ = network.apply(params, obs)
        return to_env_action(dist.mode() if deterministic else dist.sample(key))

    return policy


def _shapes(tree):
    """``tree`` with every leaf replaced by its ``(shape, dtype)``."""
    return jax.tree.map(lambda x: (jnp.shape(x), jnp.result_type(x)), tree)


def _checked_network(config: PPOConfig, spec: env_lib.EnvSpec, network: nn.Module | None) -> nn.Module:
    """``network``, or ``make_network`` if None, after checking its output on ``[num_envs, *obs_shape]``."""
    if network is None:
        return make_network(config, spec)
    obs = jax.ShapeDtypeStruct((config.num_envs, *spec.obs_shape), jnp.float32)
    got = _shapes(jax.eval_shape(network.init_with_output, jax.random.key(0), obs)[0])
    f32 = jnp.dtype(jnp.float32)
    head = ((config.num_envs, spec.num_actions), f32)
    want = (networks.Categorical(head) if spec.discrete else networks.DiagGaussian(head, head),
            ((config.num_envs,), f32))
    if got != want:
        raise ValueError(f"network must map observations of shape {obs.shape} to (distribution, value) with "
                         f"(shape, dtype) leaves {want}, got {got}")
    return network


def _check_poisoned(batch: Batch, poisoned) -> tuple[Batch, dict]:
    """``(poisoned batch, poison metrics)`` after checking (at trace time) the rollout's structure and shapes."""
    metrics = {}
    if not isinstance(poisoned, Batch) and isinstance(poisoned, tuple) and len(poisoned) == 2:
        poisoned, metrics = poisoned
    if not isinstance(poisoned, Batch) or _shapes(poisoned) != _shapes(batch):
        raise ValueError(f"poison must return a Batch with the rollout's shapes and dtypes {_shapes(batch)}, "
                         f"got {_shapes(poisoned) if isinstance(poisoned, Batch) else type(poisoned)}")
    return poisoned, dict(metrics)


def _action_mapper(spec: env_lib.EnvSpec) -> Callable[[chex.Array], chex.Array]:
    """Identity for discrete actions; unit box -> ``Box`` bounds for continuous ones."""
    if spec.discrete:
        return lambda action: action
    return lambda action: networks.scale_action(action, spec.action_low, spec.action_high)
