"""FRL paths no other test ran (issue 18): the Acrobot preset, RandomAction in the rollout, and the averaging
agreement (GDA and MDA, alone and inside DecByzPG) against a per-round NumPy loop, so a rule that collapses the
agents (to zero, or to any point other than the right subset's mean) fails, not only a bound."""

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from fedjax_attacks import attacks, frl, rl
from fedjax_attacks.frl import agreement as agr
from fedjax_attacks.frl import byzantine as byz
from fedjax_attacks.rl import networks
from fedjax_attacks.rl import policy_gradient as pg


def _brute_mda(x, f):
    best, best_diam = None, np.inf
    for subset in itertools.combinations(range(len(x)), len(x) - f):
        diam = max(np.linalg.norm(x[a] - x[b]) for a in subset for b in subset)
        if diam < best_diam - 1e-9:
            best, best_diam = subset, diam
    return x[list(best)].mean(0)


def _brute_gda(own, x, f):
    dist = np.linalg.norm(x - own, axis=1)
    order = np.argsort(np.where(np.isfinite(dist), dist, np.inf), kind="stable")
    return x[order[: len(x) - f]].mean(0)


def _agreement_loop(key, rule, theta, byzantine, attack, f, num_rounds, round_index=0):
    """Avg-Agree as a Python loop over rounds and recipients: each round's messages from ``byz.broadcast`` (the
    library's attack plumbing), the rule applied per recipient by brute force in float64."""
    theta = np.asarray(theta, np.float64)
    for k in jax.random.split(key, num_rounds):
        messages = np.asarray(byz.broadcast(k, attack, jnp.asarray(theta, jnp.float32), byzantine, round_index,
                                            True), np.float64)
        theta = np.stack([_brute_mda(messages[i], f) if rule == "mda" else _brute_gda(theta[i], messages[i], f)
                          for i in range(len(theta))])
    return theta


@pytest.mark.parametrize("rule", ["gda", "mda"])
def test_average_agreement_equals_a_loop_of_brute_force_rounds(rule):
    n, f = 7, 2
    params = 5.0 + jax.random.normal(jax.random.key(0), (n, 6))  # offset from 0: a collapse to 0 is far off
    byzantine = jnp.asarray([False, True, False, False, True, False, False])
    attack = attacks.get("alie", z=1.0)  # inside the honest spread: the Byzantine messages are often selected
    got = np.asarray(agr.average_agreement(jax.random.key(1), rule, params, byzantine, attack, f, num_rounds=3))
    want = _agreement_loop(jax.random.key(1), rule, params, byzantine, attack, f, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    honest = ~np.asarray(byzantine)
    assert np.all(np.abs(got[honest] - 5.0) < 3.0)  # the honest agents stay near their inputs, not near 0


def test_agreement_sends_fresh_noise_to_each_recipient_by_default():
    """Honest agents spread over LargeNoise's range, so GDA keeps some of the noise: the result depends on every
    recipient getting its own draw (``per_recipient=True``, the default of both functions)."""
    n, f = 7, 2
    params = jax.random.uniform(jax.random.key(4), (n, 2), minval=-1000.0, maxval=1000.0)
    byzantine = jnp.asarray([True, False, False, True, False, False, False])
    attack = attacks.get("large_noise")
    want = _agreement_loop(jax.random.key(5), "gda", params, byzantine, attack, f, 2)
    got = agr.average_agreement(jax.random.key(5), "gda", params, byzantine, attack, f, num_rounds=2)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-3)
    k_first = jax.random.split(jax.random.key(5), 2)[0]
    once = agr.agree_once(k_first, "gda", params, byzantine, attack, f)
    np.testing.assert_allclose(np.asarray(once), _agreement_loop_one(k_first, params, byzantine, attack, f),
                               rtol=1e-5, atol=1e-3)
    shared = agr.average_agreement(jax.random.key(5), "gda", params, byzantine, attack, f, num_rounds=2,
                                   per_recipient=False)
    assert not np.allclose(np.asarray(shared), want)  # one broadcast to all recipients gives another result


def _agreement_loop_one(key, theta, byzantine, attack, f):
    messages = np.asarray(byz.broadcast(key, attack, theta, byzantine, 0, True), np.float64)
    return np.stack([_brute_gda(np.asarray(theta, np.float64)[i], messages[i], f) for i in range(len(theta))])


@pytest.mark.slow  # two DecByzPG programs compile: about 30 s of CPU
def test_gda_inside_decbyzpg_is_the_agreement_of_the_stepped_parameters():
    """One DecByzPG iteration with GDA equals the same iteration without agreement (the Adam-stepped
    ``theta~``; the keys do not depend on the rule) followed by the brute-force GDA rounds."""
    config = frl.DecByzPGConfig(num_agents=4, num_byzantine=1, attack="large_noise", aggregator="median",
                                agreement="gda", agreement_rounds=2, large_batch=4, small_batch=2, horizon=10,
                                hidden=(4,), learning_rate=0.05)
    key, switches = jax.random.key(3), np.array([True])
    state, _ = jax.jit(frl.make_decbyzpg(config).run)(key, switches)
    no_agree = frl.make_decbyzpg(dataclasses.replace(config, agreement="none"))
    stepped, _ = jax.jit(no_agree.run)(key, switches)
    start = no_agree.init(key, switches)
    _, k_byz, _, _, _, k_agree = jax.random.split(start.key, 6)
    byzantine = byz.byzantine_mask(k_byz, 4, 1, config.resample_byzantine)
    want = _agreement_loop(k_agree, "gda", stepped.theta, byzantine, attacks.get("large_noise"), 1, 2)
    assert not np.allclose(stepped.theta, stepped.theta[:1])  # the agents differ before agreement
    np.testing.assert_allclose(np.asarray(state.theta), want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # a (64, 64) policy on Acrobot compiles: ~8 s
def test_acrobot_preset_builds_the_papers_lunarlander_policy_on_acrobot():
    """The preset: Acrobot-v1 (obs 6, 3 actions), a (64, 64) tanh policy, N = 96, B = 32, H = 500; sampled
    briefly, every step of an unsolved Acrobot episode pays -1."""
    config = frl.ACROBOT
    config.validate()
    assert (config.env_name, config.hidden, config.activation) == ("Acrobot-v1", (64, 64), "tanh")
    assert (config.large_batch, config.small_batch, config.horizon, config.learning_rate) == (96, 32, 500, 1e-3)
    env, env_params, policy = frl.base.make_env_and_policy(config)
    assert policy.num_params == (6 * 64 + 64) + (64 * 64 + 64) + (64 * 3 + 3)
    theta = policy.init(jax.random.key(0))
    traj = pg.sample_trajectories(jax.random.key(1), policy, theta, env, env_params, num_episodes=3, horizon=20)
    assert traj.obs.shape[1:] == (3, 6)
    np.testing.assert_array_equal(np.asarray(traj.mask)[:20], 1.0)  # no episode ends in 20 steps
    np.testing.assert_array_equal(np.asarray(traj.rewards)[:20], -1.0)
    assert set(np.unique(np.asarray(traj.actions)[:20]).tolist()) <= {0, 1, 2}


def _biased_cartpole_policy():
    """A CartPole policy whose logits are (tanh(10), tanh(-10)): action 0 with probability 1 / (1 + e^-2)."""
    env, env_params = rl.make("CartPole-v1")
    policy = pg.categorical_policy((4,), 2, hidden=(4,), activation="relu", output_activation="tanh")
    net = networks.MLP((4,), "relu", 2, "tanh", orthogonal_init=False)
    tree = jax.tree.map(jnp.zeros_like, net.init(jax.random.key(0), jnp.zeros((1, 4))))
    last = sorted(tree["params"])[-1]
    tree["params"][last]["bias"] = jnp.asarray([10.0, -10.0])
    theta = ravel_pytree(tree)[0]
    p0 = float(jnp.exp(policy.log_prob(theta, jnp.zeros((1, 4)), jnp.zeros(1, jnp.int32)))[0])
    assert p0 == pytest.approx(1 / (1 + np.exp(-2.0)), rel=1e-5)
    return env, env_params, policy, theta, p0


def test_random_actions_replace_the_policy_per_episode():
    """RandomAction (``random_actions``, a traced bool per episode batch or a flag): the flagged rollouts take
    uniform actions whatever ``pi_theta`` prefers; the others follow ``pi_theta``."""
    env, env_params, policy, theta, p0 = _biased_cartpole_policy()
    sample = jax.jit(lambda k, r: pg.sample_trajectories(k, policy, theta, env, env_params, num_episodes=64,
                                                         horizon=10, random_actions=r))

    def share_of_action_0(flag):  # one program for both flags: the flag is traced
        traj = sample(jax.random.key(2), flag)
        taken = np.asarray(traj.mask) > 0
        return np.mean(np.asarray(traj.actions)[taken] == 0), taken.sum()

    for flag, p in ((jnp.asarray(True), 0.5), (jnp.asarray(False), p0)):
        share, count = share_of_action_0(flag)
        assert abs(share - p) < 4 * np.sqrt(p * (1 - p) / count), (flag, share, count)
    mask = jnp.asarray([True, False])
    np.testing.assert_array_equal(byz.acts_randomly(True, mask), [True, False])
    assert byz.acts_randomly(False, mask) is False
