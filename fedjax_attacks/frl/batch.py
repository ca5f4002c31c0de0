"""Many variants of ByzPG / DecByzPG and many seeds, each seed with its own coins, as one jitted program.

A figure of the paper compares variants (aggregator, agreement, Byzantine behaviour) of one setting over seeds.
Their expensive part, sampling trajectories and the GPOMDP / PAGE-PG estimates, has the same shapes whenever
the variants share the environment, policy, ``K``, ``N``, ``B`` and ``H``: ``Variants`` stacks the variants'
sampling inputs and runs ``base.sample_blocks`` once, vmapped over variants (and, outside, over seeds); each
variant then absorbs its estimates with its own aggregation and agreement (distinct code, unrolled once at trace
time).

Two ways to step, the same run up to float summation order (``make_variants(..., steps=)``):

* ``"blocks"`` (the default on GPU and TPU): a step is a block of ``B`` trajectories per agent
  (``sample_block_schedules``), so seeds on different coins run side by side under ``vmap`` and fill the
  device; every block pays for both estimates (large and small batch), masked;
* ``"iterations"`` (the default on CPU, which has no idle width to fill): a step is an iteration
  (``sample_block_schedules(..., whole_iterations=True)``), seeds run one after another inside the program
  (``lax.map``), each coin is a real branch, and a large batch's ``ceil(N / B)`` blocks are one wide rollout
  with GPOMDP only: about half the work of the block steps on the CartPole preset.

``group_by_shape(configs)`` splits a figure's configurations into such groups (different ``K`` means different
shapes: one program per ``K``).
"""

from typing import Callable, Dict, List, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_attacks import sharding
from fedjax_attacks.frl import base
from fedjax_attacks.frl.byzpg import make_byzpg
from fedjax_attacks.frl.config import Blocks, ByzPGConfig, blocks_per_large_batch, check_blocks
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
    steps: str


STEPS = ("blocks", "iterations")


def default_steps() -> str:
    """``"iterations"`` on a CPU backend, ``"blocks"`` on GPU and TPU (chosen from ``jax.default_backend()``)."""
    return "iterations" if jax.default_backend() == "cpu" else "blocks"


def make_variants(configs: Dict[str, ByzPGConfig], algorithm: str = "dec", env=None, env_params=None, *,
                  mesh=None, steps: str | None = None) -> Variants:
    """Builds the variants ``{label: config}`` (one shape group, ``group_by_shape``) of ``algorithm``: ``"dec"``
    (DecByzPG) or ``"byz"`` (ByzPG). ``mesh`` (optional) shards agents over ``"agents"`` and, if it has a
    ``"seeds"`` axis, seeds over it (with ``"iterations"``, each device maps its share of the seeds: on a CPU,
    forced host devices put every core to work). ``steps``: ``"blocks"`` or ``"iterations"`` (see the module
    docstring; None = ``default_steps()``); the schedules must match it.

    Raises:
      ValueError: an unknown algorithm or steps, configurations of different shapes, a mesh axis that does not
        divide, or ``"iterations"`` with both a seeds and an agents axis; from ``init`` and ``iterate``, concrete
        schedules that ``config.check_blocks`` refuses for these steps (block schedules for ``"iterations"``,
        which would repeat every large-batch iteration once per block, iteration schedules for ``"blocks"``,
        schedules made for another ``N`` or ``B``, a first iteration that is not a large batch). Schedules traced
        by an outer ``jit`` pass unchecked: ``check_blocks`` them first.
    """
    if algorithm not in ("dec", "byz"):
        raise ValueError(f"algorithm must be 'dec' (DecByzPG) or 'byz' (ByzPG), got {algorithm!r}")
    seeds_mesh = mesh if mesh is not None and sharding.SEEDS in mesh.axis_names else None
    if steps is None:
        steps = default_steps()
    if steps not in STEPS:
        raise ValueError(f"steps must be one of {STEPS} or None, got {steps!r}")
    if steps == "iterations" and seeds_mesh is not None and sharding.AGENTS in mesh.axis_names:
        raise ValueError('steps="iterations" splits seeds over "seeds" only; a mesh with "seeds" and "agents" '
                         'needs steps="blocks"')
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
    K = first.num_agents
    any_random = any(c.random_actions for c in configs.values())

    def sample(states, block):
        """Every variant's block, sampled as one program: estimates f32[V, K, d], returns f32[V, K]."""
        inputs = [alg.block_inputs(s, block) for alg, s in zip(algorithms, states)]
        random = [jnp.zeros((K,), bool) if i.random_actions is False else i.random_actions for i in inputs]
        stacked = base.BlockInputs(*(jnp.stack(x) for x in zip(*[i[:3] for i in inputs])),
                                   jnp.stack(random) if any_random else False)  # False: no uniform sampling
        axes = base.BlockInputs(0, 0, 0, 0 if any_random else None)
        return jax.vmap(base.sample_blocks, in_axes=(axes, None, None, None, None, None))(
            stacked, block, policy, env, env_params, first)

    def absorb(states, block, estimates, returns):
        out = [alg.absorb(s, block, e, r) for alg, s, e, r in zip(algorithms, states, estimates, returns)]
        return tuple(o[0] for o in out), tuple(o[1] for o in out)

    def block_step(states, block):
        return absorb(states, block, *sample(states, block))

    def iteration_step(states, step):
        """One iteration of every variant: ``ceil(N / B)`` blocks as one wide rollout, or one small block."""
        def large(states):
            def one(index):
                return sample(states, Blocks(True, index, base.large_block_count(first, index), False))

            estimates, returns = jax.vmap(one)(jnp.arange(blocks_per_large_batch(first)))
            merged = Blocks(True, 0, first.large_batch, True)
            return absorb(states, merged, jnp.sum(estimates, axis=0), jnp.sum(returns, axis=0))

        def small(states):
            return block_step(states, Blocks(False, 0, first.small_batch, True))

        return jax.lax.cond(step.large, large, small, states)

    def init_one(key, schedule):
        return tuple(alg.init(key, schedule) for alg in algorithms)  # common random numbers across variants

    def iterate_one(states, schedule):
        states = tuple(s.replace(switches=schedule) for s in states)
        return jax.lax.scan(block_step if steps == "blocks" else iteration_step, states, base.as_schedule(schedule))

    honest_from = {label: c.num_byzantine if algorithm == "dec" and not c.resample_byzantine else 0
                   for label, c in configs.items()}

    def greedy_one(key, states, num_episodes):
        out = []
        for (label, config), state in zip(configs.items(), states):
            thetas = state.theta.reshape(-1, policy.num_params)[honest_from[label]:]
            out.append(jnp.mean(base.greedy_returns(key, policy, thetas, env, env_params, config, num_episodes)))
        return jnp.stack(out)

    def over_seeds(fn):
        if steps == "iterations":  # one seed after another (each device its share): each coin stays a branch
            mapped = lambda *args: jax.lax.map(lambda a: fn(*a), args)
            if seeds_mesh is None:
                return mapped

            def sharded(*args):
                sharding.check_divides(seeds_mesh, sharding.SEEDS, jax.tree_util.tree_leaves(args)[0].shape[0],
                                       "number of seeds S")
                return sharding.map_shards(mapped, seeds_mesh, sharding.SEEDS, [True] * len(args))(*args)

            return sharded
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

    def checked(fn):
        """``fn(keys_or_states, schedules)`` after ``check_blocks`` of concrete schedules for ``steps`` (traced
        ones pass: under an outer ``jit`` nothing is checked, so check the schedules before jitting)."""
        def run(keys_or_states, schedules):
            if not isinstance(schedules, Blocks):
                raise ValueError(f"Variants take Blocks schedules (sample_block_schedules), got "
                                 f"{type(schedules).__name__}")
            check_blocks(schedules, first, whole_iterations=steps == "iterations")
            return fn(keys_or_states, schedules)

        return run

    return Variants(tuple(configs), algorithms, checked(over_seeds(init_one)), checked(over_seeds(iterate_one)),
                    greedy, steps)
