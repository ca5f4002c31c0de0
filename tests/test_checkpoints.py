"""``run_chunked``, the one driver of long runs: its checkpoints (a resume checks what it resumes: key, config,
num_steps; a damaged step falls back to the intact one before it; a run killed at any moment resumes to the
uninterrupted result), ``on_chunk(done, state)``, and sweeps (each key with its own ``params``)."""

import dataclasses
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks import data, fl, models
from fedjax_attacks.runner import Trainer, run_chunked

TOY = """
import jax
from fedjax_attacks.runner import Trainer


def make_toy(size):
    \"\"\"A toy run in the protocol (no params): a PRNG key and ``size`` floats that every step moves.\"\"\"
    def init(key, params):
        return {"key": key, "x": jax.random.normal(key, (size,))}

    def step(state, params):
        key, sub = jax.random.split(state["key"])
        x = 0.9 * state["x"] + jax.random.normal(sub, state["x"].shape)
        return {"key": key, "x": x}, {"mean": x.mean()}

    return init, step


def toy_trainer(toy, num_steps):
    return Trainer(*toy, num_steps, lambda state, metrics: (state, metrics))
"""
exec(TOY)  # make_toy, as the subprocess below runs it
init, step = make_toy(1000)


def run(num_steps, seed=0, toy=(init, step), **options):
    return run_chunked(toy_trainer(toy, num_steps), jax.random.PRNGKey(seed), progress=False, **options)


def _assert_bit_identical(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_refuses_another_key(tmp_path):
    """A seed-1 run on a seed-0 checkpoint used to return the seed-0 run."""
    run(4, seed=0, chunk=2, checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"checkpoint_dir .* another run.*\bkey\b"):
        run(4, seed=1, chunk=2, checkpoint_dir=str(tmp_path))


def test_resume_refuses_another_num_steps(tmp_path):
    """A finished 10-step checkpoint resumed with num_steps=6 used to return 10 steps."""
    run(10, chunk=5, checkpoint_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"num_steps: 10 there, 6 here"):
        run(6, chunk=5, checkpoint_dir=str(tmp_path))


def test_resume_refuses_another_config_naming_what_differs(tmp_path):
    run(4, chunk=2, checkpoint_dir=str(tmp_path), config={"aggregator": "krum", "eps": 0.5})
    with pytest.raises(ValueError, match=r"config\.aggregator: 'krum' there, 'median' here; config\.eps"):
        run(4, chunk=2, checkpoint_dir=str(tmp_path), config={"aggregator": "median", "eps": 5.0})


class _Killed(Exception):
    pass


def _kill(done, state):
    raise _Killed


def test_fl_resume_refuses_a_checkpoint_of_another_config_with_the_same_shapes(tmp_path):
    """Krum against IPM eps 0.5, resumed as the median against eps 5, used to resume silently."""
    digits = data.load("digits")
    model = models.get("mlp", 10, digits.input_shape, hidden=(8,))
    krum = fl.FLConfig(num_clients=10, num_malicious=2, clients_per_round=5, batch_size=4, rounds=4, eval_every=2,
                       aggregator="krum", aggregator_hparams={"num_byzantine": 1}, attack="ipm",
                       attack_hparams={"eps": 0.5})
    median = dataclasses.replace(krum, aggregator="median", aggregator_hparams={}, attack_hparams={"eps": 5.0})
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    with pytest.raises(_Killed):
        fl.run_with_progress(fl.make_simulation(krum, digits, model), keys, chunk_blocks=1,
                             checkpoint_dir=str(tmp_path), on_chunk=_kill, progress=False)
    with pytest.raises(ValueError, match=r"config\.FLConfig\.aggregator: 'krum' there, 'median' here"):
        fl.run_with_progress(fl.make_simulation(median, digits, model), keys, chunk_blocks=1,
                             checkpoint_dir=str(tmp_path), progress=False)


def test_trainer_resume_refuses_a_checkpoint_of_another_learning_rate(tmp_path):
    """A trainer records its config with its checkpoints: PPO at another learning rate (same shapes) is refused."""
    from fedjax_attacks.rl import env as env_lib
    from fedjax_attacks.rl import ppo

    env, params = env_lib.make("CartPole-v1")
    config = ppo.PPOConfig(num_envs=2, num_steps=4, total_timesteps=16, update_epochs=1, num_minibatches=1,
                           hidden=(4,))
    ppo.make_trainer(config, env, params).run_with_progress(jax.random.PRNGKey(0), chunk=1, progress=False,
                                                            checkpoint_dir=str(tmp_path))
    other = ppo.make_trainer(dataclasses.replace(config, learning_rate=1e-2), env, params)
    with pytest.raises(ValueError, match="learning_rate"):
        other.run_with_progress(jax.random.PRNGKey(0), chunk=1, progress=False, checkpoint_dir=str(tmp_path))


def _damage(step_dir, how):
    """Flips one bit in the middle of, or truncates, the largest file of a saved step (its arrays)."""
    files = [os.path.join(root, name) for root, _, names in os.walk(step_dir) for name in names]
    path = max(files, key=os.path.getsize)
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    if how == "flip":
        raw[len(raw) // 2] ^= 0x10
    else:
        raw = raw[:len(raw) // 2]
    with open(path, "wb") as f:
        f.write(raw)


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_latest_step_falls_back_to_the_intact_one_before(tmp_path, how):
    """A flipped bit in the latest step used to resume silently into another run; now a warning, the step before,
    and the uninterrupted result."""
    whole = run(8, chunk=2)
    run(8, chunk=2, checkpoint_dir=str(tmp_path))  # keeps steps 6 and 8
    _damage(str(tmp_path / "8"), how)
    with pytest.warns(UserWarning, match=r"step 8 .* damaged.*resuming from step 6"):
        resumed = run(8, chunk=2, checkpoint_dir=str(tmp_path))
    _assert_bit_identical(resumed, whole)
    assert run(8, chunk=2, checkpoint_dir=str(tmp_path))[1]["mean"].shape == (8,)  # step 8 is whole again


def test_no_intact_step_is_refused(tmp_path):
    run(4, chunk=2, checkpoint_dir=str(tmp_path))
    for done in ("2", "4"):
        _damage(str(tmp_path / done), "flip")
    with pytest.raises(ValueError, match=r"no intact checkpoint \(step 4 \(.*\), step 2 \(.*\) are damaged\)"):
        run(4, chunk=2, checkpoint_dir=str(tmp_path))


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_a_checkpoint_dir_that_is_a_file_is_refused_before_any_work(tmp_path, where):
    """It used to hang the process."""
    (tmp_path / "ckpt").write_text("not a directory")
    path = str(tmp_path / "ckpt") if where == "file" else str(tmp_path / "ckpt" / "run")

    def no_init(key, params):
        raise AssertionError("init ran before checkpoint_dir was checked")

    with pytest.raises(ValueError, match=f"checkpoint_dir {path!r}"):
        run_chunked(toy_trainer((no_init, step), 4), jax.random.PRNGKey(0), progress=False, checkpoint_dir=path)


CHECKPOINT_FOREVER = TOY + """
import sys
from fedjax_attacks.runner import run_chunked

run_chunked(toy_trainer(make_toy(100_000), 12), jax.random.PRNGKey(0), chunk=1, progress=False,
            checkpoint_dir=sys.argv[1], on_chunk=lambda done, state: print(done, flush=True))
"""


def test_a_run_killed_mid_checkpoint_resumes_to_the_uninterrupted_result(tmp_path):
    """A subprocess checkpoints a 12-step run after every step and is SIGKILLed half way into a step and its save:
    the resumed run (here, in this process) equals the uninterrupted one, bit for bit."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen([sys.executable, "-c", CHECKPOINT_FOREVER, str(tmp_path)], cwd=root,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"), stdout=subprocess.PIPE, text=True)
    try:
        proc.stdout.readline()
        start = time.monotonic()
        proc.stdout.readline()
        time.sleep(0.5 * (time.monotonic() - start))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    toy = make_toy(100_000)
    _assert_bit_identical(run(12, toy=toy, chunk=1, checkpoint_dir=str(tmp_path)), run(12, toy=toy, chunk=1))


def test_on_chunk_sees_the_state_each_chunk_reached():
    """``on_chunk(done, state)``: the state after ``done`` steps (its ``x`` mean is that step's metric)."""
    seen = []
    _, metrics = run(5, chunk=2, on_chunk=lambda done, state: seen.append((done, float(state["x"].mean()))))
    assert [done for done, _ in seen] == [2, 4, 5]
    np.testing.assert_allclose([m for _, m in seen], np.asarray(metrics["mean"])[[1, 3, 4]], rtol=1e-6)


def _decay_trainer(num_steps):
    """A run whose params (a decay rate) change every step: ``x <- params x + noise``."""
    def init(key, params):
        return {"key": key, "x": jnp.ones(3)}

    def step(state, params):
        key, sub = jax.random.split(state["key"])
        x = params * state["x"] + 0.1 * jax.random.normal(sub, (3,))
        return {"key": key, "x": x}, {"mean": x.mean()}

    return Trainer(init, step, num_steps, lambda state, metrics: (state["x"], metrics), params=jnp.float32(0.9))


def test_a_sweep_runs_each_key_with_its_own_params_and_defaults_to_trainer_params():
    trainer = _decay_trainer(5)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    rates = jnp.array([0.0, 0.5, 2.0], jnp.float32)
    x, metrics = trainer.run_with_progress(keys, rates, sweep=True, chunk=2, progress=False)
    for i in range(3):
        xi, mi = jax.jit(trainer.run)(keys[i], rates[i])
        np.testing.assert_allclose(x[i], xi, rtol=1e-6)
        np.testing.assert_allclose(metrics["mean"][i], mi["mean"], rtol=1e-6)
    assert not np.allclose(x[0], x[2])
    shared, _ = trainer.run_with_progress(keys, chunk=2, progress=False)  # trainer.params = 0.9 for every key
    np.testing.assert_allclose(shared[1], jax.jit(trainer.run)(keys[1], jnp.float32(0.9))[0], rtol=1e-6)
    with pytest.raises(ValueError, match="leading axis of 3"):
        run_chunked(trainer, keys, rates[:2], sweep=True, progress=False)
    with pytest.raises(ValueError, match="batch of keys"):
        run_chunked(trainer, keys[0], rates, sweep=True, progress=False)
