"""Several hosts, simulated by 2 CPU processes on this machine: ``jax.distributed`` with 2 devices per process.

Every process runs the same script (``WORKER``): ``jax.distributed.initialize`` (the CPU backend's collectives
across processes are gloo, jax's default), then ``sharding.make_mesh`` over ``jax.devices()`` (all 4 devices of
both processes), a sharded FL run (w=8 clients over ``"clients"`` of size 4, so each process computes 4 clients'
updates) and an attack sweep (4 seeds over ``"seeds"`` of size 2, one seed pair per process, each round's clients
over ``"clients"`` of size 2). Both processes print what they read back; the test compares it with the same runs
on this process's single device.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from fedjax_attacks import fl

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Two processes each importing jax and compiling an FL run and a sweep: ~60 s wall, ~60 CPU-s in all.
pytestmark = pytest.mark.slow

NUM_PROCESSES, DEVICES_PER_PROCESS = 2, 2
SETUP = r'''
from fedjax_attacks import data, fl, models
dataset = data.load("digits")
model = models.get("mlp", dataset.num_classes, dataset.input_shape, hidden=(16,))
run_config = fl.FLConfig(num_clients=40, num_malicious=8, clients_per_round=8, batch_size=4, rounds=4, eval_every=2,
                         aggregator="krum", aggregator_hparams={"num_byzantine": 2}, attack="ipm",
                         attack_hparams={"eps": 0.5})
sweep_config = fl.FLConfig(num_clients=40, num_malicious=8, clients_per_round=8, batch_size=4, rounds=4, eval_every=2,
                           aggregator="median")
members = [("none", {}), ("ipm", {"eps": 0.5})]
num_seeds = 4
'''

WORKER = r'''
import json, sys
import jax, numpy as np
process_id, port, num_processes, devices_per_process = (int(a) for a in sys.argv[1:5])
jax.config.update("jax_num_cpu_devices", devices_per_process)
jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=num_processes,
                           process_id=process_id)
from jax.experimental import multihost_utils
from fedjax_attacks import sharding
''' + SETUP + r'''
report = {"process_index": jax.process_index(), "process_count": jax.process_count(),
          "device_count": jax.device_count(), "local_device_count": jax.local_device_count()}
key = jax.random.PRNGKey(0)

# FL: the w=8 sampled clients over "clients" (4 devices on 2 processes); the outputs come back replicated.
mesh = sharding.make_mesh(clients=jax.device_count())
params, history = jax.jit(fl.make_run(run_config, dataset, model, mesh=mesh))(key)
report["params"] = np.asarray(params).tolist()
report["accuracy"] = np.asarray(history.test_accuracy).tolist()
sim = fl.make_simulation(run_config, dataset, model, mesh=mesh)
rin = jax.jit(sim.client_updates)(sim.init(key), sim.default_params())
report["updates_spec"] = list(rin.updates.sharding.spec)
report["updates_local_shapes"] = [list(s.data.shape) for s in rin.updates.addressable_shards]
report["updates_fully_addressable"] = rin.updates.is_fully_addressable

# The sweep: seeds over "seeds" (one pair per process), clients over "clients" (a process's 2 devices).
grid = sharding.make_mesh(seeds=num_processes, clients=devices_per_process)
swept = fl.make_attack_sweep(sweep_config, dataset, model, members, mesh=grid)(jax.random.split(key, num_seeds), 1)
report["sweep_fully_addressable"] = swept.test_accuracy.is_fully_addressable
report["sweep_accuracy"] = np.asarray(multihost_utils.process_allgather(swept.test_accuracy, tiled=True)).tolist()
print("REPORT" + json.dumps(report), flush=True)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def reports():
    """Both processes' reports (process 0 first)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), str(port), str(NUM_PROCESSES),
                               str(DEVICES_PER_PROCESS)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(NUM_PROCESSES)]
    deadline = time.monotonic() + 600
    try:
        # If one process dies the other waits on it: stop polling at the first failure.
        while any(p.poll() is None for p in procs) and all(p.poll() in (None, 0) for p in procs):
            assert time.monotonic() < deadline, "multi-process run timed out"
            time.sleep(0.5)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    outputs = [p.communicate() for p in procs]
    for i, (p, (_, err)) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"process {i} exited with {p.returncode}:\n{err[-4000:]}"
    return [json.loads(next(line for line in out.splitlines() if line.startswith("REPORT"))[len("REPORT"):])
            for out, _ in outputs]


@pytest.fixture(scope="module")
def reference():
    """The same runs unsharded on this process's one device."""
    scope = {}
    exec(SETUP, scope)
    key = jax.random.PRNGKey(0)
    params, history = jax.jit(fl.make_run(scope["run_config"], scope["dataset"], scope["model"]))(key)
    swept = fl.make_attack_sweep(scope["sweep_config"], scope["dataset"], scope["model"], scope["members"])(
        jax.random.split(key, scope["num_seeds"]), 1)
    return {"params": np.asarray(params), "accuracy": np.asarray(history.test_accuracy),
            "sweep_accuracy": np.asarray(swept.test_accuracy)}


def test_processes_see_every_device(reports):
    for i, r in enumerate(reports):
        assert (r["process_index"], r["process_count"]) == (i, NUM_PROCESSES)
        assert (r["device_count"], r["local_device_count"]) == (NUM_PROCESSES * DEVICES_PER_PROCESS,
                                                                DEVICES_PER_PROCESS)


def test_multiprocess_fl_run_equals_single_device(reports, reference):
    for r in reports:
        np.testing.assert_allclose(r["params"], reference["params"], atol=1e-5)
        np.testing.assert_allclose(r["accuracy"], reference["accuracy"], atol=1e-6)
        # The updates f32[8, d] span both processes: each holds its 2 devices' shards of 2 rows.
        assert r["updates_spec"] == ["clients"] and not r["updates_fully_addressable"]
        assert [shape[0] for shape in r["updates_local_shapes"]] == [2, 2]


def test_multiprocess_sweep_equals_single_device(reports, reference):
    for r in reports:
        assert not r["sweep_fully_addressable"]  # seeds split over the processes
        np.testing.assert_allclose(r["sweep_accuracy"], reference["sweep_accuracy"], atol=1e-6)
