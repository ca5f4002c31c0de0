"""Nothing lost, nothing silent: the server refuses non-finite rounds, the non_finite attack."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedjax_attacks import aggregators, attacks, data, fl, models
from fedjax_attacks.attacks import AttackInput

DIGITS = data.load("digits")
MLP = models.get("mlp", 10, DIGITS.input_shape, hidden=(16,))
BASE = fl.FLConfig(num_clients=20, num_malicious=6, clients_per_round=5, batch_size=4, lr=0.1, rounds=12,
                   eval_every=4, attack="non_finite")


def test_non_finite_attack_sends_nan_inf_and_overflowing_rows():
    mask = jnp.array([False, True, True, False, True, True, True])
    inp = AttackInput(jnp.ones((7, 3)), mask, jnp.int32(0), full_knowledge=True)
    rows = np.asarray(attacks.get("non_finite").craft(jax.random.PRNGKey(0), inp))[np.asarray(mask)]
    assert np.isnan(rows[0]).all() and (rows[1] == np.inf).all() and (rows[2] == -np.inf).all()
    assert (rows[3] == np.float32(1e38)).all() and np.isnan(rows[4]).all()  # cycles
    with pytest.raises(ValueError, match="kind"):
        attacks.get("non_finite", kind="zero")


def test_server_skips_non_finite_rounds_and_counts_them():
    """Under the mean every round that samples an attacker is non-finite: "skip" keeps theta and counts exactly
    those rounds, "apply" lets the model become NaN for good."""
    key = jax.random.PRNGKey(1)
    params, history = jax.jit(fl.make_run(BASE, DIGITS, MLP))(key)
    assert np.all(np.isfinite(np.asarray(params)))
    sim = fl.make_simulation(BASE, DIGITS, MLP)

    @jax.jit
    def attacked_rounds(key):
        state, default = sim.init(key), sim.default_params()
        hits = []
        for _ in range(BASE.rounds):
            rin = sim.client_updates(state, default)
            hits.append(jnp.any(rin.malicious_mask))
            state, _ = sim.round_step(state, default)
        return jnp.stack(hits)

    hits = np.asarray(attacked_rounds(key)).reshape(-1, BASE.eval_every).sum(1)
    assert hits.sum() > 0 and hits.sum() < BASE.rounds
    np.testing.assert_array_equal(np.asarray(history.num_skipped), hits)
    applied, _ = jax.jit(fl.make_run(dataclasses.replace(BASE, on_nonfinite="apply"), DIGITS, MLP))(key)
    assert np.all(np.isnan(np.asarray(applied)))


def test_raise_names_the_round():
    run = jax.jit(fl.make_run(dataclasses.replace(BASE, on_nonfinite="raise"), DIGITS, MLP))
    with pytest.raises(Exception, match=r"FL round \d+: the aggregate is non-finite"):
        jax.block_until_ready(run(jax.random.PRNGKey(1)))
    with pytest.raises(ValueError, match="on_nonfinite"):
        fl.make_run(dataclasses.replace(BASE, on_nonfinite="ignore"), DIGITS, MLP)


@pytest.mark.slow
def test_every_robust_rule_survives_non_finite_attackers_when_skipping():
    """The issue's setting: M = 40 of K = 100, w = 10, 300 rounds on digits; rounds drawing more attackers than a
    rule tolerates are skipped, and every robust rule still ends at >= 0.85 accuracy."""
    model = models.get("mlp", 10, DIGITS.input_shape)
    rules = {"median": {}, "trimmed_mean": {"num_trim": 3}, "krum": {"num_byzantine": 3},
             "multi_krum": {"num_byzantine": 3}, "bulyan": {"num_byzantine": 1}, "dnc": {"num_byzantine": 3},
             "mda": {"num_byzantine": 3}, "bucketing": {"aggregator": "krum", "bucket_size": 2, "num_byzantine": 1},
             "geometric_median": {}, "clipped_median": {}, "centered_clipping": {"tau": 10.0}}
    for name, hparams in rules.items():
        config = fl.FLConfig(num_clients=100, num_malicious=40, clients_per_round=10, batch_size=8, lr=0.1,
                             rounds=300, eval_every=100, aggregator=name, aggregator_hparams=hparams,
                             attack="non_finite")
        _, history = jax.jit(fl.make_run(config, DIGITS, model))(jax.random.PRNGKey(0))
        assert float(history.test_accuracy[-1]) >= 0.85, (name, history.test_accuracy)
        assert int(np.sum(history.num_skipped)) >= 0


@pytest.mark.slow  # the fast suite checks the refusal exactly: test_overflowing_and_nan_directions_are_refused
@pytest.mark.parametrize("make", ["byzpg", "decbyzpg"])
def test_frl_refuses_non_finite_directions(make):
    """A majority of NaN senders breaks the median; the agents keep their parameters instead of turning NaN."""
    from fedjax_attacks import frl

    config = frl.DecByzPGConfig(num_agents=5, num_byzantine=3, attack="non_finite", attack_hparams={"kind": "nan"},
                                aggregator="median", agreement="none", large_batch=4, small_batch=2, horizon=20,
                                hidden=(8,), allow_byzantine_majority=True)
    alg = getattr(frl, f"make_{make}")(config)
    state, history = jax.jit(alg.run)(jax.random.PRNGKey(0), np.array([True, False, True]))
    assert np.all(np.isfinite(np.asarray(state.theta)))
    assert int(np.sum(history["skipped"])) > 0


class _Killed(Exception):
    pass


def _kill_after(chunks):
    def on_chunk(done, state):
        on_chunk.count += 1
        if on_chunk.count == chunks:
            raise _Killed

    on_chunk.count = 0
    return on_chunk


def _assert_bit_identical(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_checkpoint_and_resume_are_bit_identical_for_fl(tmp_path):
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    sim = fl.make_simulation(dataclasses.replace(BASE, attack="ipm", rounds=16, eval_every=2), DIGITS, MLP)
    whole = fl.run_with_progress(sim, keys, chunk_blocks=2)
    with pytest.raises(_Killed):
        fl.run_with_progress(sim, keys, chunk_blocks=2, checkpoint_dir=str(tmp_path / "fl"), on_chunk=_kill_after(2))
    _assert_bit_identical(fl.run_with_progress(sim, keys, chunk_blocks=2, checkpoint_dir=str(tmp_path / "fl")), whole)


@pytest.mark.slow  # the same runner as the FL test above, with two more programs to compile
def test_checkpoint_and_resume_are_bit_identical_for_ppo_and_decbyzpg(tmp_path):
    from fedjax_attacks import frl
    from fedjax_attacks.rl import env as rl_env, ppo
    from fedjax_attacks.runner import run_chunked

    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    env, env_params = rl_env.make("CartPole-v1")
    trainer = ppo.make_trainer(ppo.PPOConfig(total_timesteps=5 * 4 * 16, num_envs=4, num_steps=16, hidden=(8,)),
                               env, env_params)
    whole = trainer.run_with_progress(keys[0], chunk=2)
    with pytest.raises(_Killed):
        trainer.run_with_progress(keys[0], chunk=2, checkpoint_dir=str(tmp_path / "ppo"), on_chunk=_kill_after(1))
    resumed = trainer.run_with_progress(keys[0], chunk=2, checkpoint_dir=str(tmp_path / "ppo"))
    _assert_bit_identical((resumed.train_state.params, resumed.metrics), (whole.train_state.params, whole.metrics))

    config = frl.DecByzPGConfig(num_agents=3, aggregator="mean", agreement="none", large_batch=4, small_batch=2,
                                horizon=20, hidden=(8,))
    alg, switches = frl.make_decbyzpg(config), np.array([True, False, True, False, False])
    args = (alg.trainer(switches), keys[1])
    whole = run_chunked(*args, chunk=2, progress=False)
    with pytest.raises(_Killed):
        run_chunked(*args, chunk=2, progress=False, checkpoint_dir=str(tmp_path / "frl"), on_chunk=_kill_after(2))
    _assert_bit_identical(run_chunked(*args, chunk=2, progress=False, checkpoint_dir=str(tmp_path / "frl")), whole)


# ---------------------------------------------------------------- silently wrong results become errors or right
def test_float_idx_images_are_not_divided_again(tmp_path):
    from fedjax_attacks.data import datasets

    rng = np.random.default_rng(0)
    images = rng.uniform(size=(3, 4, 4)).astype(">f4")
    path = tmp_path / "images.idx"
    path.write_bytes(bytes([0, 0, 0x0D, 3]) + b"".join(int(n).to_bytes(4, "big") for n in images.shape)
                     + images.tobytes())
    np.testing.assert_allclose(datasets._unit_range(datasets.read_idx(str(path)), "x"), images, rtol=1e-6)
    np.testing.assert_allclose(datasets._unit_range(np.array([[0, 255]], np.uint8), "x"), [[0.0, 1.0]])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        datasets._unit_range(np.array([[2.0]], np.float32), "x")


def test_bad_datasets_and_models_are_refused():
    def broken(**changes):
        return dataclasses.replace(DIGITS, **changes)

    cases = {
        "labels outside": broken(y_train=np.where(np.arange(len(DIGITS.y_train)) == 0, 10, DIGITS.y_train)),
        "integer labels": broken(y_train=DIGITS.y_train.astype(np.float32)),
        "NaN": broken(x_train=np.where(np.arange(DIGITS.x_train.size).reshape(DIGITS.x_train.shape) == 5, np.nan,
                                       DIGITS.x_train)),
        "differ in shape": broken(x_test=DIGITS.x_test[:, :4]),
    }
    for match, dataset in cases.items():
        with pytest.raises(ValueError, match=match):
            fl.make_simulation(fl.FLConfig(), dataset, MLP)
    with pytest.raises(ValueError, match="fewer than"):
        fl.make_simulation(fl.FLConfig(), DIGITS, models.get("mlp", 5, DIGITS.input_shape))


def test_label_flip_uses_the_dataset_classes():
    five = dataclasses.replace(DIGITS, y_train=DIGITS.y_train % 5, y_test=DIGITS.y_test % 5, num_classes=5)
    sim = fl.make_simulation(dataclasses.replace(BASE, attack="label_flip"), five, models.get("mlp", 5, (8, 8, 1)))
    x, y = sim.attack.poison_data(jax.random.PRNGKey(0), jnp.zeros((3, 1)), jnp.array([0, 2, 4]))
    np.testing.assert_array_equal(y, [4, 2, 0])  # C - 1 - y with C = 5, not 10


def test_image_metrics_refuse_batches_of_different_sizes():
    from fedjax_attacks import inversion

    a, b = jnp.zeros((4, 8, 8, 1)), jnp.zeros((1, 8, 8, 1))
    for metric in (inversion.psnr, inversion.ssim, inversion.mse):
        with pytest.raises(ValueError, match="same shape"):
            metric(a, b)


def _bad_configs():
    from fedjax_attacks.rl import dqn, ppo, td3

    return [
        (lambda: fl.FLConfig(num_clients="100").validate(), "num_clients"),
        (lambda: fl.FLConfig(clients_per_round=2.5).validate(), "clients_per_round"),
        (lambda: fl.FLConfig(server_lr=0.0).validate(), "server_lr"),
        (lambda: fl.FLConfig(lr=-0.1).validate(), "lr"),
        (lambda: ppo.PPOConfig(learning_rate=0.0).validate(), "learning_rate"),
        (lambda: ppo.PPOConfig(num_envs=4.0).validate(), "num_envs"),
        (lambda: dqn.DQNConfig(learning_rate=-1e-3).validate(), "learning_rate"),
        (lambda: dqn.DQNConfig(total_timesteps=1000, learning_starts=1000).validate(), "learning_starts"),
        (lambda: dqn.DQNConfig(buffer_size=64, batch_size=128).validate(), "batch_size"),
        (lambda: td3.TD3Config(total_timesteps=100, learning_starts=200).validate(), "learning_starts"),
    ]


@pytest.mark.parametrize("index", range(10))
def test_nonsense_configs_raise_naming_the_field(index):
    make, field = _bad_configs()[index]
    with pytest.raises(ValueError, match=field):
        make()


def test_inversion_and_frl_configs_refuse_bad_rates_layers_and_flags():
    from fedjax_attacks import frl, inversion

    for bad in (-0.1, 0.0, float("inf"), "0.1"):
        for attack in (inversion.dlg, inversion.inverting_gradients):
            with pytest.raises(ValueError, match="learning_rate"):
                attack(MLP, batch_size=1, learning_rate=bad)
    cases = {"learning_rate": float("inf"), "hidden": (0,), "gamma": "0.9", "per_recipient": 3,
             "random_actions": "yes"}
    for field, bad in cases.items():
        with pytest.raises(ValueError, match=field):
            frl.make_decbyzpg(dataclasses.replace(frl.CARTPOLE, **{field: bad}))


@pytest.mark.parametrize("method", ["network", "sort"])
def test_clipped_median_drops_rows_it_cannot_clip(method):
    """The median of the clipped finite rows (NumPy), whatever the number of NaN / Inf / overflowing rows, on data
    offset from zero (a rule that kept them as zero rows would be pulled towards 0); NaN when every row is bad."""
    rng = np.random.default_rng(3)
    x = (rng.normal(size=(13, 6)) + 50).astype(np.float32)
    clip = lambda rows: rows * np.minimum(1.0, 2.0 / np.linalg.norm(rows, axis=1, keepdims=True))
    rule = jax.jit(lambda u: aggregators.clipped_median(2.0, method=method)(u))
    for bad in ([], [4], [0, 5, 6, 11], [1, 2, 3, 7, 8, 9, 10], list(range(12))):
        y = x.copy()
        for i, row in enumerate(bad):
            y[row] = (np.nan, np.inf, -np.inf, 1e38)[i % 4]
        y[bad[:1], 2] = 1.0  # a partly finite row
        kept = np.delete(x, bad, axis=0)
        np.testing.assert_allclose(rule(jnp.asarray(y)), np.median(clip(kept), axis=0), rtol=1e-5)
    assert np.isnan(np.asarray(rule(jnp.full((13, 6), np.nan)))).all()



def test_bucketing_drops_non_finite_rows_from_their_bucket():
    """Each bucket's mean is over its finite rows (NumPy, the same shuffle); a bucket of bad rows only is NaN."""
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(10, 5)) + 20).astype(np.float32)
    key = jax.random.key(5)
    perm = np.asarray(jax.random.permutation(key, 10))
    bad = list(perm[:3]) + [perm[4]]  # bucket 0 is all bad, bucket 1 has one bad row of three
    for i, row in enumerate(bad):
        x[row] = (np.nan, np.inf, 1e38, -np.inf)[i]
    got = np.asarray(jax.jit(lambda u, k: aggregators.bucketing(bucket_size=3)(u, key=k))(jnp.asarray(x), key))
    assert np.isnan(got[0]).all()
    for b in range(1, 4):
        rows = [r for r in perm[3 * b:3 * b + 3] if r not in bad]
        np.testing.assert_allclose(got[b], x[rows].mean(0), rtol=1e-6)


def test_nnm_mixes_finite_rows_only():
    """Finite rows mix their finite nearest neighbours (NumPy, on data at 50); a NaN / Inf row becomes the mean of
    those mixes, so nothing is pulled towards zero."""
    rng = np.random.default_rng(6)
    x = (rng.normal(size=(9, 4)) + 50).astype(np.float32)
    bad = [2, 7]
    x[2], x[7] = np.nan, np.inf
    f = 3
    got = np.asarray(jax.jit(lambda u: aggregators.nnm(f)(u))(jnp.asarray(x)))
    good = [i for i in range(9) if i not in bad]
    sq = lambda i, j: float(np.sum((x[i].astype(np.float64) - x[j]) ** 2)) if i in good and j in good else np.inf
    mixes = {}
    for i in good:
        nearest = sorted(range(9), key=lambda j: (sq(i, j), j))[:9 - f]
        mixes[i] = x[[j for j in nearest if j in good]].mean(0)
        np.testing.assert_allclose(got[i], mixes[i], rtol=1e-6)
    for i in bad:
        np.testing.assert_allclose(got[i], np.mean([mixes[i] for i in good], axis=0), rtol=1e-6)
    assert np.all(got >= x[good].min(0) - 1e-4) and np.all(got <= x[good].max(0) + 1e-4)
