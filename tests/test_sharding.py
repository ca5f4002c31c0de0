"""Sharded runs on 4 forced CPU devices equal the unsharded ones; a mesh that does not fit the work is refused.

``XLA_FLAGS=--xla_force_host_platform_device_count=4`` must be set before jax is imported, so every check runs
in one subprocess (the rest of the suite keeps one device) that prints a JSON report the tests read.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# One ~50 s subprocess compiling FL, the sweep and PPO on 4 devices (tests/test_frl_sharding.py stays fast).
pytestmark = pytest.mark.slow

CHECKS = r'''
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
from fedjax_attacks import data, fl, models, rl, sharding
from fedjax_attacks.rl import ppo

assert jax.device_count() == 4, jax.devices()
report = {}
ds = data.load("digits")
model = models.get("mlp", ds.num_classes, ds.input_shape, hidden=(16,))
config = fl.FLConfig(num_clients=40, num_malicious=8, clients_per_round=8, batch_size=4, rounds=4, eval_every=2,
                     aggregator="median")
key = jax.random.PRNGKey(0)

def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

# FL: the 8 sampled clients of every round split over "clients" (4 devices, 2 clients each).
mesh = sharding.make_mesh(clients=4)
plain = jax.jit(fl.make_run(config, ds, model))(key)
sharded = jax.jit(fl.make_run(config, ds, model, mesh=mesh))(key)
report["fl_max_diff"] = max_diff(plain, sharded)
report["fl_accuracy"] = [np.asarray(plain[1].test_accuracy).tolist(), np.asarray(sharded[1].test_accuracy).tolist()]
sim = fl.make_simulation(config, ds, model, mesh=mesh)
rin = jax.jit(sim.client_updates)(sim.init(key), sim.default_params())
report["fl_updates_spec"] = list(rin.updates.sharding.spec)
report["fl_updates_shards"] = sorted({tuple(s.data.shape) for s in rin.updates.addressable_shards})

# The attack sweep: 4 seeds over "seeds" (2) and each round's clients over "clients" (2).
members = [("none", {}), ("ipm", {"eps": 0.5})]
keys = jax.random.split(key, 4)
plain = fl.make_attack_sweep(config, ds, model, members)(keys, 1)
grid = sharding.make_mesh(seeds=2, clients=2)
swept = fl.make_attack_sweep(config, ds, model, members, mesh=grid)(keys, 1)
report["sweep_max_diff"] = max_diff(plain, swept)
report["sweep_shape"] = list(np.shape(swept.test_accuracy))
report["sweep_spec"] = list(swept.test_accuracy.sharding.spec)

# PPO: 4 seeds over "seeds" (4 devices, one seed each) against the plain vmap.
env, env_params = rl.make("CartPole-v1")
cfg = ppo.PPOConfig(total_timesteps=2 * 4 * 8, num_envs=4, num_steps=8, hidden=(8,), update_epochs=1,
                    num_minibatches=1)
train = ppo.make_train(cfg, env, env_params)
keys = jax.random.split(jax.random.key(3), 4)
plain = jax.jit(jax.vmap(train))(keys)
seeded = rl.make_seed_batch(train, mesh=sharding.make_mesh(seeds=4))(keys)
report["ppo_max_diff"] = max_diff((plain.metrics, plain.train_state.params), (seeded.metrics, seeded.train_state.params))
report["ppo_spec"] = list(jax.tree.leaves(seeded.train_state.params)[0].sharding.spec)

# A mesh that does not fit the work is refused, naming the axis and the count.
errors = {}
def expect_error(name, fn):
    try:
        fn()
    except ValueError as e:
        errors[name] = str(e)
bad_w = sharding.make_mesh(clients=3)
expect_error("w_not_divisible", lambda: fl.make_run(config, ds, model, mesh=bad_w))
no_clients = Mesh(np.asarray(jax.devices()), ("data",))
expect_error("missing_clients", lambda: fl.make_run(config, ds, model, mesh=no_clients))
expect_error("missing_seeds", lambda: fl.make_attack_sweep(config, ds, model, members, mesh=no_clients))
expect_error("seeds_not_divisible",
             lambda: rl.make_seed_batch(train, mesh=sharding.make_mesh(seeds=4))(jax.random.split(key, 6)))
expect_error("too_many_devices", lambda: sharding.make_mesh(seeds=4, clients=2))
expect_error("explicit_mesh_ok", lambda: fl.make_run(config, ds, model, mesh=jax.make_mesh((4,), ("clients",))))
report["errors"] = errors
print("REPORT" + json.dumps(report))
'''


@pytest.fixture(scope="module")
def report():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", CHECKS], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("REPORT"))
    return json.loads(line[len("REPORT"):])


def test_sharded_fl_run_equals_unsharded(report):
    assert report["fl_max_diff"] < 1e-5, report["fl_max_diff"]
    assert report["fl_accuracy"][0] == pytest.approx(report["fl_accuracy"][1], abs=1e-6)
    # The honest updates f32[w=8, d] really are split: 4 shards of 2 rows each.
    assert report["fl_updates_spec"] == ["clients"]
    assert len(report["fl_updates_shards"]) == 1 and report["fl_updates_shards"][0][0] == 2


def test_sharded_attack_sweep_equals_unsharded(report):
    assert report["sweep_shape"] == [4, 2]
    assert report["sweep_max_diff"] < 1e-5, report["sweep_max_diff"]
    assert report["sweep_spec"] == ["seeds"]


def test_sharded_ppo_seed_batch_equals_unsharded(report):
    assert report["ppo_max_diff"] < 1e-5, report["ppo_max_diff"]
    assert report["ppo_spec"] == ["seeds"]


def test_mesh_that_does_not_fit_the_work_raises(report):
    errors = report["errors"]
    assert "clients_per_round w=8" in errors["w_not_divisible"] and "'clients' of size 3" in errors["w_not_divisible"]
    assert "no axis named 'clients'" in errors["missing_clients"]
    assert "no axis named 'seeds'" in errors["missing_seeds"]
    assert "number of seeds S=6" in errors["seeds_not_divisible"] and "size 4" in errors["seeds_not_divisible"]
    assert "8 devices asked for, 4 available" in errors["too_many_devices"]
    assert "explicit_mesh_ok" not in errors  # jax.make_mesh's Explicit axes are accepted (made Auto)
