"""Many variants of ByzPG / DecByzPG and many seeds, each seed with its own coins, as one jitted program.

A figure of the paper compares variants (aggregator, agreement, Byzantine behaviour) of one setting over seeds.
Their expensive part, sampling trajectories and the GPOMDP / PAGE-PG estimates, has the same shapes whenever
the variants share the environment, policy, ``K``, ``N``, ``B`` and ``H``: ``Variants`` stacks the variants'
sampling inputs and runs ``base.sample_blocks`` once, vmapped over variants (and, outside, over seeds); each
variant then absorbs its estimates with its own aggregation and agreement (distinct code, unrolled once at trace
time). Steps are ``Blocks`` of ``B`` trajectories per agent, so seeds on different coins run in lockstep.

``group_by_shape(configs)`` splits a figure's configurations into such groups (different ``K`` means different
shapes: one program per ``K``).
"""

from typing import Callable, Dict, List, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_attacks import sharding
from fedjax_attacks.frl import base
from fedjax_attacks.frl.byzpg import make_byzpg
from fedjax_attacks.frl.config import ByzPGConfig
from fedjax_attacks.frl.decbyzpg import make_decbyzpg

# The fields that fix the shapes of the sampling step; variants may differ in every other field.
SHAPE_FIELDS = ("env_name", "num_agents", "large_batch", "small_batch", "horizon", "hidden", "activation",
                "output_activation", "gamma", "importance_weights", "switch_prob")


def shape_key(config: ByzPGConfig) -> tuple:
    """The values of ``SHAPE_FIELDS``: configurations with equal keys can share one program."""
    return tuple(getattr(config, name) for name in SHAPE_FIELDS)


def group_by_shape(configs: Dict[str, ByzPGConfig]) -> List[Dict[str, ByzPGConfig]]:
    """``{label: config}`` split into groups of equal ``shape_key``, in first-seen order."""
    groups: Dict[tuple, Dict[str, ByzPGConfig]] = {}
    for label, config in configs.items():
        groups.setdefault(shape_key(config), {})[label] = config
    return list(groups.values())


class Variants(NamedTuple):
    """``V`` variants run together. ``init(keys, schedules)`` and ``iterate(states, schedules)`` are vmapped
    over a leading seed axis S (``schedules``: ``Blocks`` of shape [S, M], from ``sample_block_schedules``);
    ``states`` is a tuple of V ``State``s with that seed axis; ``iterate`` returns ``(states, histories)``
    with a tuple of V histories of arrays [S, M]. ``greedy(key, states, num_episodes)`` is each variant's
    mean greedy return over its honest agents, f32[V, S] (jit it with ``num_episodes`` static).
    """

    labels: tuple
    algorithms: tuple
    init: Callable
    iterate: Callable
    greedy: Callable


def make_variants(configs: Dict[str, ByzPGConfig], algorithm: str = "dec", env=None, env_params=None, *,
                  mesh=None) -> Variants:
    """Builds the variants ``{label: config}`` (one shape group, ``group_by_shape``) of ``algorithm``: ``"dec"``
    (DecByzPG) or ``"byz"`` (ByzPG). ``mesh`` (optional) shards agents over ``"agents"`` and, if it has a
    ``"seeds"`` axis, seeds over it.

    Raises:
      ValueError: an unknown algorithm, configurations of different shapes, or a mesh axis that does not divide.
    """
    if algorithm not in ("dec", "byz"):
        raise ValueError(f"algorithm must be 'dec' (DecByzPG) or 'byz' (ByzPG), got {algorithm!r}")
    if not configs:
        raise ValueError("make_variants needs at least one configuration")
    keys = {shape_key(c) for c in configs.values()}
    if len(keys) > 1:
        raise ValueError(f"make_variants: the configurations differ in {SHAPE_FIELDS} (one program per shape; "
                         f"split them with group_by_shape)")
    make = make_decbyzpg if algorithm == "dec" else make_byzpg
    agent_mesh = mesh if mesh is not None and sharding.AGENTS in mesh.axis_names else None
    algorithms = tuple(make(c, env, env_params, mesh=agent_mesh) for c in configs.values())
    first = next(iter(configs.values()))
    env, env_params, policy = base.make_env_and_policy(first, env, env_params)
    seeds_mesh = mesh if mesh is not None and sharding.SEEDS in mesh.axis_names else None
    K = first.num_agents
    any_random = any(c.random_actions for c in configs.values())

    def block_step(states, block):
        inputs = [alg.block_inputs(s, block) for alg, s in zip(algorithms, states)]
        random = [jnp.zeros((K,), bool) if i.random_actions is False else i.random_actions for i in inputs]
        stacked = base.BlockInputs(*(jnp.stack(x) for x in zip(*[i[:3] for i in inputs])),
                                   jnp.stack(random) if any_random else False)  # False: no uniform sampling
        axes = base.BlockInputs(0, 0, 0, 0 if any_random else None)
        estimates, returns = jax.vmap(base.sample_blocks, in_axes=(axes, None, None, None, None, None))(
            stacked, block, policy, env, env_params, first)
        out = [alg.absorb(s, block, e, r) for alg, s, e, r in zip(algorithms, states, estimates, returns)]
        return tuple(o[0] for o in out), tuple(o[1] for o in out)

    def init_one(key, schedule):
        return tuple(alg.init(key, schedule) for alg in algorithms)  # common random numbers across variants

    def iterate_one(states, schedule):
        states = tuple(s.replace(switches=schedule) for s in states)
        return jax.lax.scan(block_step, states, base.as_schedule(schedule))

    honest_from = {label: c.num_byzantine if algorithm == "dec" and not c.resample_byzantine else 0
                   for label, c in configs.items()}

    def greedy_one(key, states, num_episodes):
        out = []
        for (label, config), state in zip(configs.items(), states):
            thetas = state.theta.reshape(-1, policy.num_params)[honest_from[label]:]
            out.append(jnp.mean(base.greedy_returns(key, policy, thetas, env, env_params, config, num_episodes)))
        return jnp.stack(out)

    def over_seeds(fn):
        if seeds_mesh is None:
            return jax.vmap(fn)

        def batched(*args):
            sharding.check_divides(seeds_mesh, sharding.SEEDS, jax.tree_util.tree_leaves(args)[0].shape[0],
                                   "number of seeds S")
            args = sharding.constrain(args, seeds_mesh, sharding.SEEDS)
            return sharding.constrain(jax.vmap(fn, spmd_axis_name=sharding.SEEDS)(*args), seeds_mesh,
                                      sharding.SEEDS)

        return batched

    def greedy(key, states, num_episodes: int):
        seeds = jax.tree_util.tree_leaves(states)[0].shape[0]
        return jax.vmap(lambda k, s: greedy_one(k, s, num_episodes))(jax.random.split(key, seeds), states).T

    return Variants(tuple(configs), algorithms, over_seeds(init_one), over_seeds(iterate_one), greedy)
