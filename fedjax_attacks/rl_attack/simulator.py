"""Phase 2's world model: the FL run as a gymnax ``Environment`` built from the learned distribution ``P~``.

One step is one FedSGD round (as in the reference code): the server samples ``w`` of ``K`` clients without
replacement (ids below ``M`` are attackers); every benign client sends the gradient of a ``B``-sample batch of
``P~``; every sampled attacker sends the update crafted from the action (``actions.make_crafter``); the server's
own rule aggregates (its state threaded; FLTrust's ``g0`` from a root set guessed from ``P~``) and updates
``theta``. The state the policy sees (sec. 4.3) is the output layer's weights and bias, min-max scaled to
[-1, 1], and the share ``m_t / w`` of the next round's sampled clients that are attackers. The reward is the
increase of the loss on the held-out rows of ``P~``; undiscounted in the paper. ``reset``/``step`` are pure, so
many simulated FL episodes run under ``vmap``.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from gymnax.environments import environment, spaces

from fedjax_attacks import inversion
from fedjax_attacks.fl.simulation import sample_clients
from fedjax_attacks.rl_attack.config import ActionSpace
from fedjax_attacks.rl_attack.distribution import LearnedData, heldout_loss, sample


@struct.dataclass
class SimParams:
    """What the simulator runs on (traced; changes between policy-learning chunks without recompiling).

    Attributes:
      data: the learned distribution ``P~``.
      start_params: f32[d], the global model every episode starts from.
      num_malicious: int32 ``M``.
      max_steps_in_episode: the episode's horizon in rounds (static).
    """

    data: LearnedData
    start_params: jax.Array
    num_malicious: jax.Array
    max_steps_in_episode: int = struct.field(pytree_node=False, default=20)


@struct.dataclass
class SimState:
    """``params`` theta f32[d]; the aggregator's ``agg_state``; ``malicious: bool[w]`` (the next round's sampled
    attackers); ``loss``, the held-out loss at ``params``; ``time``, rounds into the episode."""

    params: jax.Array
    agg_state: Any
    malicious: jax.Array
    loss: jax.Array
    time: jax.Array


class FLSimulator(environment.Environment):
    """The attackers' simulator of the FL run (gymnax ``Environment``; see the module docstring).

    Args:
      model: the ``FlatModel`` the federation trains.
      aggregator: the server's ``aggregators.Aggregator`` (the same object as the real server's).
      space: the attackers' ``ActionSpace``.
      craft: ``craft(key, action, theta, data) -> f32[d]`` from ``actions.make_crafter``.
      num_clients, clients_per_round, batch_size, lr, root_size: ``K``, ``w``, ``B``, ``eta`` and FLTrust's root
        size, as in the real run's ``FLConfig``.
    """

    def __init__(self, model, aggregator, space: ActionSpace, craft: Callable, *, num_clients: int,
                 clients_per_round: int, batch_size: int, lr: float, root_size: int):
        self.model = model
        self.aggregator = aggregator
        self.space = space
        self.craft = craft
        self.num_clients = int(num_clients)
        self.clients_per_round = int(clients_per_round)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.root_size = int(root_size)
        self.observed = last_layer_indices(model)
        self._grad = jax.grad(model.loss)

    @property
    def name(self) -> str:
        """``FLSimulator``."""
        return "FLSimulator"

    @property
    def num_actions(self) -> int:
        """The action's dimension (2 or 3)."""
        return len(self.space.low)

    def observation_space(self, params=None):
        """``Box(-1, 1)`` of the scaled output layer plus ``m_t / w``."""
        return spaces.Box(-1.0, 1.0, (len(self.observed) + 1,), jnp.float32)

    def action_space(self, params=None):
        """The ``ActionSpace`` box (``space.box``: log scale in dimension 0 when ``space.log_scale``)."""
        low, high = self.space.box
        return spaces.Box(jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32), (self.num_actions,),
                          jnp.float32)

    def observe_params(self, params: jax.Array, malicious: jax.Array) -> jax.Array:
        """The policy's state: the output layer of ``params`` min-max scaled to [-1, 1], then ``m_t / w``."""
        return observation(params[self.observed], malicious)

    def sample_malicious(self, key, num_malicious) -> jax.Array:
        """Which of the ``w`` clients the server samples (uniformly, without replacement) are attackers."""
        return sample_clients(key, self.num_clients, self.clients_per_round) < num_malicious

    def reset_env(self, key, params: SimParams):
        """An episode starts from ``params.start_params`` with the aggregator's initial state."""
        theta = params.start_params
        state = SimState(theta, self.aggregator.init(theta.shape[0]), self.sample_malicious(key, params.num_malicious),
                         heldout_loss(self.model, theta, params.data), jnp.zeros((), jnp.int32))
        return self.observe_params(theta, state.malicious), state

    def step_env(self, key, state: SimState, action, params: SimParams):
        """One simulated FedSGD round under the attackers' ``action``; reward = held-out loss increase."""
        k_batch, k_craft, k_root, k_agg, k_next = jax.random.split(key, 5)
        data, w = params.data, self.clients_per_round
        idx = sample(k_batch, data, w * self.batch_size).reshape(w, self.batch_size)
        honest = jax.vmap(self._grad, (None, 0, 0))(state.params, data.x[idx], data.y[idx])
        crafted = self.craft(k_craft, jnp.asarray(action, jnp.float32), state.params, data)
        submitted = jnp.where(state.malicious[:, None], crafted[None], honest)
        context = {"key": k_agg}
        if "num_malicious" in self.aggregator.needs:
            context["num_malicious"] = jnp.sum(state.malicious.astype(jnp.int32))
        if "server_update" in self.aggregator.needs:
            root = sample(k_root, data, self.root_size)
            context["server_update"] = self._grad(state.params, data.x[root], data.y[root])
        aggregate, agg_state = self.aggregator.update(submitted, state.agg_state, **context)
        theta = state.params - self.lr * aggregate
        loss = heldout_loss(self.model, theta, data)
        reward = jnp.nan_to_num(loss - state.loss, nan=0.0, posinf=0.0, neginf=0.0)
        malicious = self.sample_malicious(k_next, params.num_malicious)
        new_state = SimState(theta, agg_state, malicious, loss, state.time + 1)
        info = {"num_malicious_sampled": jnp.sum(state.malicious.astype(jnp.int32)), "heldout_loss": loss}
        return self.observe_params(theta, malicious), new_state, reward, jnp.zeros((), bool), info

    def is_truncated(self, state: SimState, params: SimParams):
        """The episode ends after ``params.max_steps_in_episode`` rounds."""
        return state.time >= params.max_steps_in_episode


def observation(last_layer: jax.Array, malicious: jax.Array) -> jax.Array:
    """``[2 (v - min v) / (max v - min v) - 1, m_t / w]`` for the output layer ``v`` (zeros if ``v`` is flat)."""
    low, high = jnp.min(last_layer), jnp.max(last_layer)
    span = high - low
    scaled = jnp.where(span > 0, 2.0 * (last_layer - low) / jnp.where(span > 0, span, 1.0) - 1.0, 0.0)
    share = jnp.mean(malicious.astype(jnp.float32), keepdims=True)
    return jnp.nan_to_num(jnp.concatenate([scaled, share]).astype(jnp.float32))


def last_layer_indices(model) -> np.ndarray:
    """Positions in the flat ``theta`` of the output layer's weights and bias (host int array, sorted).

    The output layer is the parameter collection holding the output bias, which ``inversion.output_bias_indices``
    finds by probing the logits; every leaf of that collection (kernel and bias) is taken.
    """
    leaves = jax.tree_util.tree_flatten_with_path(model.init_pytree)[0]
    sizes = [int(np.prod(leaf.shape)) for _, leaf in leaves]
    starts = np.cumsum([0] + sizes)
    bias = int(inversion.output_bias_indices(model)[0])
    owner = int(np.searchsorted(starts, bias, side="right") - 1)
    module = leaves[owner][0][:-1]
    picked = [np.arange(starts[i], starts[i + 1]) for i, (path, _) in enumerate(leaves) if path[:-1] == module]
    return np.concatenate(picked)
