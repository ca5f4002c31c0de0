"""ByzPG / DecByzPG with ``mesh=``: agents (workers) sharded over forced CPU devices equal the unsharded run.

The sharded run needs several devices, so it runs in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (the rest of the suite keeps one device).
"""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from fedjax_attacks import frl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import dataclasses
    import sys
    import jax
    import numpy as np
    from jax.sharding import Mesh
    from fedjax_attacks import frl

    assert len(jax.devices()) == 4, jax.devices()
    config = frl.DecByzPGConfig(num_agents=4, num_byzantine=1, attack="large_noise", aggregator="median",
                                agreement="mda", large_batch=4, small_batch=2, horizon=12, hidden=(8,))
    coins = np.array([True, False, True])
    key = jax.random.PRNGKey(0)
    agents = Mesh(np.array(jax.devices()), ("agents",))
    plain, plain_history = jax.jit(frl.make_decbyzpg(config).run)(key, coins)
    sharded, sharded_history = jax.jit(frl.make_decbyzpg(config, mesh=agents).run)(key, coins)
    assert len(sharded.theta.sharding.device_set) == 4, sharded.theta.sharding
    np.testing.assert_allclose(np.asarray(sharded.theta), np.asarray(plain.theta), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(sharded_history["returns"]), np.asarray(plain_history["returns"]),
                               rtol=1e-5)
    # ByzPG: the K workers' sampling split over "agents"; the server samples alone on small-batch iterations
    plain, _ = jax.jit(frl.make_byzpg(config).run)(key, coins)
    sharded, _ = jax.jit(frl.make_byzpg(config, mesh=agents).run)(key, coins)
    np.testing.assert_allclose(np.asarray(sharded.theta), np.asarray(plain.theta), rtol=1e-5, atol=1e-6)

    if sys.argv[1] == "figure":  # seeds over "seeds" and agents over "agents" in the figure runner (2 x 2)
        grid = Mesh(np.array(jax.devices()).reshape(2, 2), ("seeds", "agents"))
        keys = jax.random.split(key, 2)
        seeds_only = Mesh(np.array(jax.devices()[:2]), ("seeds",))
        for steps, split in (("blocks", grid), ("iterations", seeds_only)):  # vmapped; or each device maps its share
            schedules = frl.sample_block_schedules(jax.random.PRNGKey(1), config, 8, num_seeds=2,
                                                   whole_iterations=steps == "iterations")
            outs = []
            for mesh in (None, split):
                variants = frl.batch.make_variants({"robust": config}, "dec", mesh=mesh, steps=steps)
                init, iterate = jax.jit(variants.init), jax.jit(variants.iterate)
                outs.append(iterate(init(keys, schedules), schedules)[0][0].theta)
            assert len(outs[1].sharding.device_set) == split.size, (steps, outs[1].sharding)
            np.testing.assert_allclose(np.asarray(outs[1]), np.asarray(outs[0]), rtol=1e-5, atol=1e-6)

        try:
            frl.batch.make_variants({"robust": config}, "dec", mesh=grid, steps="iterations")
        except ValueError as err:
            assert "blocks" in str(err), err
        else:
            raise AssertionError("iterations over a seeds x agents mesh was accepted")

    try:
        frl.make_decbyzpg(dataclasses.replace(config, num_agents=3), mesh=agents)
    except ValueError as err:
        assert "num_agents" in str(err) and "agents" in str(err), err
    else:
        raise AssertionError("K = 3 over 4 devices was accepted")
    print("SHARDED OK")
""")


def _run_on_four_devices(mode):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0 and "SHARDED OK" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.slow  # a subprocess on 4 forced devices: ~30 s
def test_sharded_decbyzpg_equals_unsharded_on_forced_cpu_devices():
    _run_on_four_devices("agents")


@pytest.mark.slow
def test_figure_runner_shards_seeds_and_agents_on_forced_cpu_devices():
    _run_on_four_devices("figure")


def test_mesh_without_an_agents_axis_is_refused():
    mesh = Mesh(np.array(jax.devices()[:1]), ("seeds",))
    for make in (frl.make_decbyzpg, frl.make_byzpg):
        with pytest.raises(ValueError, match="agents"):
            make(frl.DecByzPGConfig(num_agents=2, aggregator="mean", agreement="none", large_batch=4,
                                    small_batch=2, horizon=10, hidden=(4,)), mesh=mesh)
    with pytest.raises(ValueError, match="Mesh"):
        frl.make_decbyzpg(frl.DecByzPGConfig(num_agents=2, aggregator="mean", agreement="none"), mesh="agents")
