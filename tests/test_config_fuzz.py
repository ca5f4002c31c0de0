"""Config fuzzing (issues 16, 26): hypothesis draws random FLConfig, PPOConfig, TD3Config, DQNConfig, DecByzPGConfig,
RLAttackConfig, BackdoorConfig, RGIAConfig and RGIA Victim configs.

An independent oracle written here from the documented rules says whether a drawn config is valid. Every invalid
one must raise ``ValueError`` at the builder (``make_simulation`` / ``make_trainer`` / ``make_decbyzpg``), before
anything is traced; every valid one must build, trace (``jax.eval_shape``), and run two rounds or updates without
a NaN. Runs are tiny and their compiled programs cached by config, so the file takes seconds.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fedjax_attacks import data, fl, frl, models
from fedjax_attacks import backdoor
from fedjax_attacks import rgia
from fedjax_attacks import rl_attack as ra
from fedjax_attacks.rl import dqn, env as env_lib, ppo, td3

_QUIET = dict(deadline=None, suppress_health_check=list(HealthCheck))
FEW = settings(max_examples=2, derandomize=True, **_QUIET)       # valid configs that run (a compile each)
SLOW_RUNS = settings(max_examples=20, **_QUIET)                  # the slow variant of the runs
SOME = settings(max_examples=30, derandomize=True, **_QUIET)     # validation only (milliseconds each)
MANY = settings(max_examples=300, **_QUIET)                      # the slow variant of the validation fuzz
DIGITS = data.load("digits")
MLP = models.get("mlp", DIGITS.num_classes, DIGITS.input_shape, hidden=(4,))
BAD_COUNTS = [0, -1, 2.0, "3", True, None]
BAD_RATES = [0, 0.0, -0.1, float("nan"), float("inf"), "0.1", True, None]


def _count(lo, hi):
    return st.integers(lo, hi)


def _is_count(v, minimum=1):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum


def _is_rate(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _is_number_in(v, lo, hi, lo_open=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return False
    return (lo < v if lo_open else lo <= v) and v <= hi


@st.composite
def _configs(draw, valid_fields: dict, bad_values: dict):
    """A dict of fields: every field from its valid strategy, then (half the time) one field replaced by a bad
    value. Returns ``(fields, corrupted field or None, the fields before corruption)``; cross-field rules are
    left to the oracle."""
    fields = {name: draw(strategy) for name, strategy in valid_fields.items()}
    clean, corrupted = dict(fields), None
    if bad_values and draw(st.booleans()):
        corrupted = draw(st.sampled_from(sorted(bad_values)))
        fields[corrupted] = draw(st.sampled_from(bad_values[corrupted]))
    return fields, corrupted, clean


def _check(oracle, drawn, build):
    """``build(fields)`` raises ``ValueError`` exactly when ``oracle(fields)`` says invalid; when one field was
    corrupted in an otherwise valid config, the message names it."""
    fields, corrupted, clean = drawn
    if oracle(fields):
        return build(fields)
    with pytest.raises(ValueError) as info:
        build(fields)
    if corrupted is not None and oracle(clean):
        assert corrupted in str(info.value) or corrupted.split("_")[0] in str(info.value), (corrupted, info.value)
    return None


# ----------------------------------------------------------------------------------------------------------- FL
AGGREGATORS = {  # name -> (hparams, smallest number of rows it accepts, from the papers)
    "mean": ({}, 1), "median": ({}, 1), "trimmed_mean": ({"num_trim": 1}, 3), "krum": ({"num_byzantine": 1}, 5),
    "geometric_median": ({}, 1), "norm_clip": ({"max_norm": 1.0}, None), "fltrust": ({}, 1),
}
ATTACKS = {"none": ({}, False), "ipm": ({"eps": 0.5}, True), "alie": ({}, False), "gaussian": ({}, False),
           "sign_flip": ({}, False), "label_flip": ({}, False), "non_finite": ({}, False)}
FL_VALID = {
    "num_clients": _count(6, 12), "num_malicious": _count(0, 4), "clients_per_round": _count(1, 6),
    "batch_size": _count(1, 6), "local_steps": _count(1, 2), "lr": st.floats(1e-3, 0.5),
    "server_lr": st.floats(0.1, 1.0), "rounds": st.just(2), "eval_every": st.sampled_from([1, 2]),
    "mode": st.sampled_from(["fedsgd", "fedavg"]), "aggregator": st.sampled_from(sorted(AGGREGATORS)),
    "attack": st.sampled_from(sorted(ATTACKS)), "knowledge": st.sampled_from(["full", "partial"]),
    "partition": st.sampled_from(["iid", "dirichlet"]), "q": st.floats(0.0, 1.0), "alpha": st.floats(0.5, 5.0),
    "partition_seed": _count(0, 3), "root_size": _count(1, 3000), "unroll": _count(1, 2),
    "on_nonfinite": st.sampled_from(["skip", "apply"]),
}
FL_BAD = {
    **{name: BAD_COUNTS for name in ("num_clients", "clients_per_round", "batch_size", "local_steps", "rounds",
                                     "eval_every", "root_size", "unroll")},
    "num_malicious": [-1, 1.0, "2", None], "partition_seed": [-1, 0.5, "0"],
    "lr": BAD_RATES, "server_lr": BAD_RATES, "mode": ["sgd", "FedAvg", None], "knowledge": ["half", None],
    "aggregator": ["krumm", "norm_clip_", None, 3], "attack": ["ipmm", None], "partition": ["noniid", None],
    "q": [-0.1, 1.5, float("nan"), "0.5", None], "alpha": [0, -1.0, float("nan"), float("inf"), "1"],
    "on_nonfinite": ["ignore", None],
}


def _fl_valid(c: dict) -> bool:
    counts = ("num_clients", "clients_per_round", "batch_size", "local_steps", "rounds", "eval_every", "root_size",
              "unroll")
    if not all(_is_count(c[n]) for n in counts) or not all(_is_count(c[n], 0) for n in ("num_malicious",
                                                                                        "partition_seed")):
        return False
    if not (_is_rate(c["lr"]) and _is_rate(c["server_lr"])):
        return False
    if c["mode"] not in ("fedsgd", "fedavg") or c["knowledge"] not in ("full", "partial"):
        return False
    if c["partition"] not in ("iid", "q_noniid", "dirichlet") or c["on_nonfinite"] not in ("skip", "raise", "apply"):
        return False
    if not _is_number_in(c["q"], 0.0, 1.0) or not _is_number_in(c["alpha"], 0.0, math.inf, lo_open=True):
        return False
    if c["aggregator"] not in AGGREGATORS or c["attack"] not in ATTACKS:
        return False
    _, min_rows = AGGREGATORS[c["aggregator"]]
    if min_rows is None:  # a pre-aggregator is never the final rule
        return False
    if c["num_malicious"] > c["num_clients"] or c["clients_per_round"] > c["num_clients"]:
        return False
    if c["rounds"] % c["eval_every"] or (c["mode"] == "fedsgd" and c["local_steps"] != 1):
        return False
    if ATTACKS[c["attack"]][1] and c["knowledge"] != "full":
        return False
    if c["clients_per_round"] < min_rows:
        return False
    sizes = data.partition(DIGITS.y_train, c["num_clients"], c["partition"], seed=c["partition_seed"],
                           alpha=c["alpha"]).sizes
    return c["batch_size"] <= sizes.min()


def _fl_config(c: dict) -> fl.FLConfig:
    c = dict(c)
    c["aggregator_hparams"] = AGGREGATORS.get(c["aggregator"], ({}, 1))[0] if isinstance(c["aggregator"], str) else {}
    c["attack_hparams"] = ATTACKS.get(c["attack"], ({}, False))[0] if isinstance(c["attack"], str) else {}
    return fl.FLConfig(**c)


_FL_RUNS = {}  # compiled runs by static config: the learning rates are traced (FLParams)


def _fl_run(sim):
    key = repr(dataclasses.replace(sim.config, lr=1.0, server_lr=1.0))
    if key not in _FL_RUNS:
        _FL_RUNS[key] = jax.jit(sim.run)
    params = sim.default_params()
    return lambda k: _FL_RUNS[key](k, params)


def _fl_config_fuzz_validation(drawn):
    """Invalid -> ValueError naming the field at ``make_simulation``; valid -> it builds."""
    _check(_fl_valid, drawn, lambda fields: fl.make_simulation(_fl_config(fields), DIGITS, MLP))


def _fl_valid_configs_run_two_rounds_without_nan(drawn):
    fields = drawn[0]
    assume(_fl_valid(fields))
    # on_nonfinite="skip" is the guarantee: even the non_finite attack leaves theta finite
    fields = {**fields, "on_nonfinite": "skip", "num_malicious": min(fields["num_malicious"], 1)}
    sim = fl.make_simulation(_fl_config(fields), DIGITS, MLP)
    params, history = _fl_run(sim)(jax.random.PRNGKey(1))
    assert np.all(np.isfinite(params)) and np.all(np.isfinite(history.test_loss))
    assert history.round[-1] == 2


# ---------------------------------------------------------------------------------------------------------- PPO
CARTPOLE = env_lib.make("CartPole-v1")
PPO_VALID = {
    "num_envs": _count(1, 2), "num_steps": st.sampled_from([4, 8]), "learning_rate": st.floats(1e-4, 1e-2),
    "update_epochs": _count(1, 2), "num_minibatches": st.sampled_from([1, 2]), "gamma": st.floats(0.0, 1.0),
    "gae_lambda": st.floats(0.0, 1.0), "clip_eps": st.floats(0.05, 0.5), "ent_coef": st.floats(0.0, 0.05),
    "vf_coef": st.floats(0.0, 1.0), "max_grad_norm": st.floats(0.1, 5.0), "hidden": st.sampled_from([(4,), (4, 4)]),
    "activation": st.sampled_from(["tanh", "relu"]), "normalize_observations": st.booleans(),
    "anneal_lr": st.booleans(),
}
PPO_BAD = {
    **{name: BAD_COUNTS for name in ("num_envs", "num_steps", "update_epochs", "num_minibatches")},
    "learning_rate": BAD_RATES, "gamma": [-0.1, 1.5, float("nan"), "0.9"], "gae_lambda": [-0.5, 2.0, float("nan")],
    "clip_eps": [0.0, -0.2, float("nan"), float("inf"), "0.2"], "ent_coef": [-0.01, float("nan"), float("inf")],
    "vf_coef": [-0.5, float("nan"), float("inf")], "max_grad_norm": [0.0, -1.0, float("nan"), "1"],
    "hidden": [(0,), (4, -1), (4.0,), "64", ()], "activation": ["sigmoid", None],
}


def _ppo_fields(drawn):
    """Two updates: ``total_timesteps = 2 num_envs num_steps``."""
    def fill(fields):
        ok = _is_count(fields["num_envs"]) and _is_count(fields["num_steps"])
        return {**fields, "total_timesteps": 2 * (fields["num_envs"] * fields["num_steps"] if ok else 8)}
    fields, corrupted, clean = drawn
    return fill(fields), corrupted, fill(clean)


def _ppo_valid(c: dict) -> bool:
    if not all(_is_count(c[n]) for n in ("total_timesteps", "num_envs", "num_steps", "update_epochs",
                                         "num_minibatches")):
        return False
    if not _is_rate(c["learning_rate"]) or not _is_rate(c["clip_eps"]) or not _is_rate(c["max_grad_norm"]):
        return False
    if not (_is_number_in(c["gamma"], 0, 1) and _is_number_in(c["gae_lambda"], 0, 1)):
        return False
    if not (_is_number_in(c["ent_coef"], 0, math.inf) and _is_number_in(c["vf_coef"], 0, math.inf)):
        return False
    if not _valid_hidden(c["hidden"]) or c["activation"] not in ("tanh", "relu", "identity"):
        return False
    batch = c["num_envs"] * c["num_steps"]
    return c["total_timesteps"] >= batch and batch % c["num_minibatches"] == 0


def _valid_hidden(hidden) -> bool:
    return isinstance(hidden, (tuple, list)) and len(hidden) >= 1 and all(_is_count(h) for h in hidden)


_PPO_RUNS = {}


def _ppo_config_fuzz_validation(drawn):
    _check(_ppo_valid, drawn, lambda fields: ppo.make_trainer(ppo.PPOConfig(**fields), *CARTPOLE))


def _ppo_valid_configs_run_two_updates_without_nan(drawn):
    fields = drawn[0]
    assume(_ppo_valid(fields))
    config = ppo.PPOConfig(**fields)
    trainer = ppo.make_trainer(config, *CARTPOLE)
    assert trainer.num_steps == 2
    static = dataclasses.replace(config, learning_rate=0.0, gamma=0.0, gae_lambda=0.0, clip_eps=0.0, ent_coef=0.0,
                                 vf_coef=0.0, max_grad_norm=0.0)  # the traced floats do not change the program
    if repr(static) not in _PPO_RUNS:
        def run(floats, key):
            return ppo.make_trainer(dataclasses.replace(config, **floats), *CARTPOLE).run(key)
        _PPO_RUNS[repr(static)] = jax.jit(run)
    floats = {n: jnp.float32(fields[n]) for n in ("learning_rate", "gamma", "gae_lambda", "clip_eps", "ent_coef",
                                                  "vf_coef", "max_grad_norm")}
    out = _PPO_RUNS[repr(static)](floats, jax.random.PRNGKey(0))
    leaves = jax.tree_util.tree_leaves(out.train_state.params)
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves)
    assert all(np.all(np.isfinite(v)) for k, v in out.metrics.items() if "loss" in k)


# ------------------------------------------------------------------------------------------------ TD3 and DQN
PENDULUM = env_lib.make("Pendulum-v1")
OFF_POLICY_VALID = {
    "num_envs": _count(1, 2), "learning_rate": st.floats(1e-4, 1e-2), "buffer_size": _count(2, 16),
    "gamma": st.floats(0.0, 1.0), "batch_size": _count(1, 4), "learning_starts": _count(0, 1),
    "hidden": st.sampled_from([(4,), (4, 4)]),
}
OFF_POLICY_BAD = {
    **{name: BAD_COUNTS for name in ("num_envs", "buffer_size", "batch_size")},
    "learning_starts": [-1, 1.0, "0", 100], "learning_rate": BAD_RATES, "gamma": [-0.1, 1.5, float("nan"), "0.9"],
    "hidden": [(0,), (4, -1), (4.0,), "64", ()],
}
TD3_VALID = {**OFF_POLICY_VALID, "tau": st.floats(0.01, 1.0), "policy_noise": st.floats(0.0, 0.5),
             "exploration_noise": st.floats(0.0, 0.5), "noise_clip": st.floats(0.0, 1.0),
             "policy_frequency": _count(1, 2), "gradient_steps": _count(1, 2)}
TD3_BAD = {**OFF_POLICY_BAD, "tau": [0.0, 1.5, -0.1, float("nan")], "policy_noise": [-0.1, float("nan")],
           "exploration_noise": [-0.1, float("inf")], "noise_clip": [-0.5, float("nan")],
           "policy_frequency": BAD_COUNTS, "gradient_steps": BAD_COUNTS}
DQN_VALID = {**OFF_POLICY_VALID, "tau": st.floats(0.01, 1.0), "start_e": st.floats(0.5, 1.0),
             "end_e": st.floats(0.0, 0.5), "exploration_fraction": st.floats(0.1, 1.0),
             "train_frequency": _count(1, 2), "target_network_frequency": _count(1, 4)}
DQN_BAD = {**OFF_POLICY_BAD, "tau": [0.0, 1.5, float("nan")], "start_e": [-0.1, 1.5, float("nan")],
           "end_e": [-0.1, 1.5, float("nan")], "exploration_fraction": [0.0, 1.5, float("nan")],
           "train_frequency": BAD_COUNTS, "target_network_frequency": BAD_COUNTS}


def _off_policy_fields(drawn):
    """Two iterations: ``total_timesteps = 2 num_envs``."""
    def fill(fields):
        return {**fields, "total_timesteps": 2 * (fields["num_envs"] if _is_count(fields["num_envs"]) else 1)}
    fields, corrupted, clean = drawn
    return fill(fields), corrupted, fill(clean)


def _off_policy_valid(c: dict, counts) -> bool:
    if not all(_is_count(c[n]) for n in ("total_timesteps", "num_envs", "batch_size", "buffer_size") + counts):
        return False
    if not _is_count(c["learning_starts"], 0) or not _is_rate(c["learning_rate"]):
        return False
    if not _is_number_in(c["gamma"], 0, 1) or not _is_number_in(c["tau"], 0, 1, lo_open=True):
        return False
    if not _valid_hidden(c["hidden"]):
        return False
    return (c["total_timesteps"] // c["num_envs"] >= 1 and c["buffer_size"] >= c["num_envs"]
            and c["learning_starts"] < c["total_timesteps"]
            and c["batch_size"] <= min(c["buffer_size"], c["total_timesteps"]))


def _td3_valid(c: dict) -> bool:
    noises_ok = all(_is_number_in(c[n], 0, math.inf) for n in ("policy_noise", "exploration_noise", "noise_clip"))
    return noises_ok and _off_policy_valid(c, ("policy_frequency", "gradient_steps"))


def _dqn_valid(c: dict) -> bool:
    eps_ok = _is_number_in(c["start_e"], 0, 1) and _is_number_in(c["end_e"], 0, 1)
    return (eps_ok and _is_number_in(c["exploration_fraction"], 0, 1, lo_open=True)
            and _off_policy_valid(c, ("train_frequency", "target_network_frequency")))


def _td3_config_fuzz_validation(drawn):
    _check(_td3_valid, drawn, lambda fields: td3.make_trainer(td3.TD3Config(**fields), *PENDULUM))


def _dqn_config_fuzz_validation(drawn):
    _check(_dqn_valid, drawn, lambda fields: dqn.make_trainer(dqn.DQNConfig(**fields), *CARTPOLE))


_TD3_RUNS = {}


def _td3_valid_configs_run_two_iterations_without_nan(drawn):
    fields = drawn[0]
    assume(_td3_valid(fields))
    config = td3.TD3Config(**fields)
    floats = ("learning_rate", "gamma", "tau", "policy_noise", "exploration_noise", "noise_clip")
    static = dataclasses.replace(config, **{n: 0.0 for n in floats})
    if repr(static) not in _TD3_RUNS:
        def run(values, key):
            return td3.make_trainer(dataclasses.replace(config, **values), *PENDULUM).run(key)
        _TD3_RUNS[repr(static)] = jax.jit(run)
    out = _TD3_RUNS[repr(static)]({n: jnp.float32(fields[n]) for n in floats}, jax.random.PRNGKey(0))
    leaves = jax.tree_util.tree_leaves((out.learner.actor.params, out.learner.critic.params))
    assert all(np.all(np.isfinite(leaf)) for leaf in leaves)
    assert np.all(np.isfinite(out.metrics["critic_loss"]))


# ------------------------------------------------------------------------------------------------- DecByzPG
DEC_VALID = {
    "num_agents": _count(1, 4), "num_byzantine": _count(0, 1), "attack": st.sampled_from(["none", "large_noise"]),
    "aggregator": st.sampled_from(["mean", "median", "rfa"]), "bucket_size": _count(1, 2),
    "large_batch": _count(1, 3), "small_batch": _count(1, 2), "switch_prob": st.floats(0.05, 1.0),
    "learning_rate": st.floats(1e-4, 1e-2), "gamma": st.floats(0.5, 1.0), "horizon": _count(2, 6),
    "agreement": st.sampled_from(["mda", "gda", "none"]), "agreement_rounds": _count(0, 2),
    "hidden": st.just((4,)),
}
DEC_BAD = {
    **{name: BAD_COUNTS for name in ("num_agents", "large_batch", "small_batch", "horizon", "bucket_size")},
    "num_byzantine": [-1, 9], "switch_prob": [0.0, -0.2, 1.5, float("nan"), "0.5"],
    "gamma": [0.0, 1.5, float("nan"), "0.9"], "learning_rate": [0.0, -1e-3, float("nan"), float("inf"), "1e-3"],
    "hidden": [(0,), (4, -1), (4.0,), "64", ()], "agreement": ["avg", None], "agreement_rounds": [-1, 1.5, "2"],
    "aggregator": ["krumm", "norm_clip", "fltrust"], "attack": ["noise"],
}


def _dec_valid(c: dict) -> bool:
    if not all(_is_count(c[n]) for n in ("num_agents", "large_batch", "small_batch", "horizon", "bucket_size")):
        return False
    if not _is_count(c["num_byzantine"], 0) or 2 * c["num_byzantine"] >= c["num_agents"]:
        return False  # a Byzantine majority needs allow_byzantine_majority=True (not drawn)
    if (c["num_byzantine"] > 0) != (c["attack"] != "none") or c["attack"] not in ("none", "large_noise"):
        return False
    if not (_is_number_in(c["switch_prob"], 0, 1, lo_open=True) and _is_number_in(c["gamma"], 0, 1, lo_open=True)):
        return False
    if not _is_rate(c["learning_rate"]) or c["aggregator"] not in ("mean", "median", "rfa"):
        return False
    if not _valid_hidden(c["hidden"]) or not (c["bucket_size"] == 1 or c["bucket_size"] < c["num_agents"]):
        return False  # one bucket of every agent turns any rule into the mean
    return c["agreement"] in ("mda", "gda", "none") and _is_count(c["agreement_rounds"], 0)


def _dec_config(fields):
    return frl.DecByzPGConfig(env_name="CartPole-v1", **fields)


_DEC_RUNS = {}


def _decbyzpg_config_fuzz_validation(drawn):
    _check(_dec_valid, drawn, lambda fields: frl.make_decbyzpg(_dec_config(fields)))


def _decbyzpg_valid_configs_run_two_iterations_without_nan(drawn):
    fields = drawn[0]
    assume(_dec_valid(fields))
    config = _dec_config(fields)
    alg = frl.make_decbyzpg(config)
    if repr(config) not in _DEC_RUNS:
        _DEC_RUNS[repr(config)] = jax.jit(alg.run)
    state, history = _DEC_RUNS[repr(config)](jax.random.PRNGKey(0), np.array([True, False]))
    assert np.all(np.isfinite(state.theta)) and np.all(np.isfinite(history["returns"]))


# ------------------------------------------------------------------------------------------------ RL attack
RL_FL = fl.FLConfig(num_clients=20, num_malicious=4, clients_per_round=10, batch_size=4, rounds=12, eval_every=4,
                    aggregator="krum", aggregator_hparams={"num_byzantine": 2})
RL_COUNTS = ("tau_e", "chunk_rounds", "policy_iterations", "images_per_round", "max_targets", "inversion_steps",
             "inversion_restarts", "denoiser_steps", "denoiser_batch", "heldout_size", "attack_batch",
             "num_trajectories", "root_guess_size", "horizon", "num_envs")
RL_VALID = {
    **{name: _count(1, 4) for name in RL_COUNTS}, "tau_e": _count(1, 11),
    "policy_until": st.sampled_from([None, 0, 8]), "own_capacity": st.sampled_from([None, 128]),
    "distribution": st.sampled_from(["learned", "own", "unlabeled"]), "algorithm": st.sampled_from(["td3", "ppo"]),
    "episode_start": st.sampled_from(["latest", "initial"]), "action": st.sampled_from([None, "reference"]),
    "action_low": st.sampled_from([None, (0.2, 2.0)]), "log_scale": st.booleans(),
    "heldout_fraction": st.floats(0.05, 0.95), "inversion_lr": st.floats(1e-3, 0.5),
    "noise_std": st.floats(0.0, 1.0), "tv_weight": st.floats(0.0, 0.1), "attack_lr": st.sampled_from([None, 0.1]),
}
RL_BAD = {
    **{name: BAD_COUNTS for name in RL_COUNTS}, "tau_e": BAD_COUNTS + [10.5],
    "policy_until": [-1, 2.5, "3", True], "own_capacity": [0, 2.5, "128"],
    "distribution": ["learnt", None], "algorithm": ["sac", None], "episode_start": ["first", None],
    "action": ["papers", 3], "action_low": [("0.1", 1.0), (0.1,), (0.1, 0.5), (20.0, 2.0), (float("nan"), 1.0)],
    "log_scale": [1, "False", None], "heldout_fraction": [0, 1.0, -0.1, float("nan"), "0.2", True],
    "inversion_lr": BAD_RATES, "noise_std": [-0.1, float("nan"), float("inf"), "0.3"],
    "tv_weight": [-1e-3, float("nan"), "0"], "attack_lr": [0, -0.1, float("nan"), "0.1", True],
}


def _rl_low_ok(low) -> bool:
    """The default reference box under Krum is [0.1, 9.9] x [1, 21]; a given low must fit below its high."""
    if low is None:
        return True
    return (isinstance(low, tuple) and len(low) == 2 and all(_is_number_in(v, -math.inf, math.inf) for v in low)
            and 0 < low[0] < 9.9 and 1 <= low[1] < 21.0)


def _rl_valid(c: dict) -> bool:
    if not all(_is_count(c[n]) for n in RL_COUNTS) or c["tau_e"] >= RL_FL.rounds:
        return False
    if not (c["policy_until"] is None or _is_count(c["policy_until"], 0)):
        return False
    if not (c["own_capacity"] is None or _is_count(c["own_capacity"])):
        return False
    choices = {"distribution": ("learned", "own", "unlabeled"), "algorithm": ("td3", "ppo"),
               "episode_start": ("latest", "initial"), "action": (None, "reference")}
    if any(c[name] not in options for name, options in choices.items()) or not isinstance(c["log_scale"], bool):
        return False
    if not _is_number_in(c["heldout_fraction"], 0, 1, lo_open=True) or c["heldout_fraction"] == 1:
        return False
    if not _is_rate(c["inversion_lr"]) or not (c["attack_lr"] is None or _is_rate(c["attack_lr"])):
        return False
    if not all(_is_number_in(c[n], 0, math.inf) for n in ("noise_std", "tv_weight")):
        return False
    return _rl_low_ok(c["action_low"])


def _rl_attack_config_fuzz_validation(drawn):
    _check(_rl_valid, drawn, lambda fields: ra.RLAttackConfig(**fields).validate(RL_FL))


# ------------------------------------------------------------------------------- SleeperNets and RGIA configs
CARTPOLE_SPEC = env_lib.spec(*CARTPOLE)
BACKDOOR_VALID = {"target": _count(0, 1), "budget": st.floats(1e-4, 1.0), "reward": st.floats(0.1, 10.0),
                  "alpha": st.floats(0.0, 2.0), "asr_stop": st.floats(0.1, 1.0), "target_dim": st.just(0)}
BACKDOOR_BAD = {"target": [2, -1, 0.0, True, "0"], "budget": [0, 1.5, -0.1, float("nan"), "0.1", True],
                "reward": BAD_RATES, "alpha": [-0.5, float("nan"), float("inf"), "0.5", True],
                "asr_stop": [0, 1.5, float("nan"), "1"], "target_dim": [-1, 0.5, "0", True]}


def _backdoor_valid(c: dict) -> bool:
    if not (_is_count(c["target"], 0) and c["target"] < CARTPOLE_SPEC.num_actions and _is_count(c["target_dim"], 0)):
        return False
    if not all(_is_number_in(c[n], 0, 1, lo_open=True) for n in ("budget", "asr_stop")):
        return False
    return _is_rate(c["reward"]) and _is_number_in(c["alpha"], 0, math.inf)


def _backdoor_config_fuzz_validation(drawn):
    _check(_backdoor_valid, drawn, lambda fields: backdoor.BackdoorConfig(**fields).validate(CARTPOLE_SPEC))


RGIA_VALID = {"batch_size": _count(1, 8), "num_steps": _count(1, 100), "learning_rate": st.floats(1e-3, 1.0),
              "num_restarts": _count(1, 16), "distance": st.sampled_from(sorted(rgia.DISTANCES)),
              "dynamics_target_only": st.booleans(),
              "regularizers": st.sampled_from([{}, {"reward": 1.0}, {"reward": 0.0, "dynamics": 0.1}])}
RGIA_BAD = {**{name: BAD_COUNTS + [2.5] for name in ("batch_size", "num_steps", "num_restarts")},
            "learning_rate": BAD_RATES, "distance": ["l1", None, 2], "dynamics_target_only": [1, "True", None],
            "regularizers": [{"reward": -1.0}, {"reward": float("nan")}, {"reward": "1"}, {"rewards": 1.0}, [1.0]]}


def _rgia_valid(c: dict) -> bool:
    if not all(_is_count(c[n]) for n in ("batch_size", "num_steps", "num_restarts")) or not _is_rate(
            c["learning_rate"]):
        return False
    if c["distance"] not in rgia.DISTANCES or not isinstance(c["dynamics_target_only"], bool):
        return False
    weights = c["regularizers"]
    return isinstance(weights, dict) and all(name in rgia.REGULARIZERS and _is_number_in(w, 0, math.inf)
                                             for name, w in weights.items())


def _rgia_config_fuzz_validation(drawn):
    _check(_rgia_valid, drawn, lambda fields: rgia.RGIAConfig(**fields).validate())


VICTIM_VALID = {"kind": st.sampled_from(["dqn", "td3"]), "obs_dim": _count(1, 8), "num_actions": _count(1, 4),
                "hidden": st.sampled_from([(4,), (4, 4)]), "gamma": st.floats(0.0, 1.0), "double_q": st.booleans(),
                "policy_noise": st.floats(0.0, 0.5), "noise_clip": st.floats(0.0, 1.0)}
VICTIM_BAD = {"kind": ["ppo", None], "obs_dim": BAD_COUNTS, "num_actions": BAD_COUNTS,
              "hidden": [(0,), (4.0,), "64", ()], "gamma": [-0.1, 1.5, float("nan"), "0.9"],
              "double_q": [1, "False", None], "policy_noise": [-0.1, float("nan")],
              "noise_clip": [-0.5, float("inf"), "0.5"]}


def _victim_valid(c: dict) -> bool:
    if c["kind"] not in rgia.VICTIM_KINDS or not (_is_count(c["obs_dim"]) and _is_count(c["num_actions"])):
        return False
    if not _valid_hidden(c["hidden"]) or not _is_number_in(c["gamma"], 0, 1) or not isinstance(c["double_q"], bool):
        return False
    return all(_is_number_in(c[n], 0, math.inf) for n in ("policy_noise", "noise_clip"))


def _victim_fuzz_validation(drawn):
    _check(_victim_valid, drawn, lambda fields: rgia.Victim(**fields).validate())


# the validation fuzz: 30 examples each in `make test`, 300 under `make test-slow`
def _fuzz_tests(strategy, body):
    return SOME(given(strategy)(body)), pytest.mark.slow(MANY(given(strategy)(body)))


test_fl_config_fuzz_validation, test_fl_config_fuzz_validation_many = _fuzz_tests(
    _configs(FL_VALID, FL_BAD), _fl_config_fuzz_validation)
test_ppo_config_fuzz_validation, test_ppo_config_fuzz_validation_many = _fuzz_tests(
    _configs(PPO_VALID, PPO_BAD).map(_ppo_fields), _ppo_config_fuzz_validation)
test_td3_config_fuzz_validation, test_td3_config_fuzz_validation_many = _fuzz_tests(
    _configs(TD3_VALID, TD3_BAD).map(_off_policy_fields), _td3_config_fuzz_validation)
test_dqn_config_fuzz_validation, test_dqn_config_fuzz_validation_many = _fuzz_tests(
    _configs(DQN_VALID, DQN_BAD).map(_off_policy_fields), _dqn_config_fuzz_validation)
test_decbyzpg_config_fuzz_validation, test_decbyzpg_config_fuzz_validation_many = _fuzz_tests(
    _configs(DEC_VALID, DEC_BAD), _decbyzpg_config_fuzz_validation)
test_rl_attack_config_fuzz_validation, test_rl_attack_config_fuzz_validation_many = _fuzz_tests(
    _configs(RL_VALID, RL_BAD), _rl_attack_config_fuzz_validation)
test_backdoor_config_fuzz_validation, test_backdoor_config_fuzz_validation_many = _fuzz_tests(
    _configs(BACKDOOR_VALID, BACKDOOR_BAD), _backdoor_config_fuzz_validation)
test_rgia_config_fuzz_validation, test_rgia_config_fuzz_validation_many = _fuzz_tests(
    _configs(RGIA_VALID, RGIA_BAD), _rgia_config_fuzz_validation)
test_victim_fuzz_validation, test_victim_fuzz_validation_many = _fuzz_tests(
    _configs(VICTIM_VALID, VICTIM_BAD), _victim_fuzz_validation)


# the runs: 2 valid configs each in `make test`, 20 under `make test-slow`
def _run_tests(strategy, body):
    return FEW(given(strategy)(body)), pytest.mark.slow(SLOW_RUNS(given(strategy)(body)))


test_fl_valid_configs_run_two_rounds_without_nan, test_fl_valid_configs_run_two_rounds_without_nan_many = _run_tests(
    _configs(FL_VALID, {}), _fl_valid_configs_run_two_rounds_without_nan)
test_ppo_valid_configs_run_two_updates_without_nan, test_ppo_valid_configs_run_two_updates_without_nan_many = _run_tests(
    _configs(PPO_VALID, {}).map(_ppo_fields), _ppo_valid_configs_run_two_updates_without_nan)
test_td3_valid_configs_run_two_iterations_without_nan, test_td3_valid_configs_run_two_iterations_without_nan_many = _run_tests(
    _configs(TD3_VALID, {}).map(_off_policy_fields), _td3_valid_configs_run_two_iterations_without_nan)
test_decbyzpg_valid_configs_run_two_iterations_without_nan, test_decbyzpg_valid_configs_run_two_iterations_without_nan_many = _run_tests(
    _configs(DEC_VALID, {}), _decbyzpg_valid_configs_run_two_iterations_without_nan)


# every bad value of every table, one at a time in an otherwise valid config, and cross-field cases (cheap:
# the fuzz above samples these, this sweeps them all)
FL_BASE = dict(num_clients=8, num_malicious=2, clients_per_round=5, batch_size=2, local_steps=1, lr=0.1,
               server_lr=1.0, rounds=2, eval_every=1, mode="fedsgd", aggregator="krum", attack="ipm",
               knowledge="full", partition="iid", q=0.5, alpha=1.0, partition_seed=0, root_size=10, unroll=1,
               on_nonfinite="skip")
PPO_BASE = dict(num_envs=2, num_steps=4, learning_rate=1e-3, update_epochs=1, num_minibatches=2, gamma=0.99,
                gae_lambda=0.95, clip_eps=0.2, ent_coef=0.01, vf_coef=0.5, max_grad_norm=0.5, hidden=(4,),
                activation="tanh", normalize_observations=False, anneal_lr=True, total_timesteps=16)
OFF_BASE = dict(num_envs=1, learning_rate=1e-3, buffer_size=8, gamma=0.99, batch_size=2, learning_starts=0,
                hidden=(4,), tau=0.5, total_timesteps=2)
TD3_BASE = dict(OFF_BASE, policy_noise=0.2, exploration_noise=0.1, noise_clip=0.5, policy_frequency=2,
                gradient_steps=1)
DQN_BASE = dict(OFF_BASE, start_e=1.0, end_e=0.05, exploration_fraction=0.5, train_frequency=1,
                target_network_frequency=2)
DEC_BASE = dict(num_agents=4, num_byzantine=1, attack="large_noise", aggregator="median", bucket_size=1,
                large_batch=2, small_batch=1, switch_prob=0.5, learning_rate=1e-3, gamma=0.99, horizon=4,
                agreement="gda", agreement_rounds=0, hidden=(4,))
RL_BASE = dict({name: 2 for name in RL_COUNTS}, tau_e=4, policy_until=8, own_capacity=None, distribution="learned",
               algorithm="td3", episode_start="latest", action=None, action_low=None, log_scale=True,
               heldout_fraction=0.2, inversion_lr=0.05, noise_std=0.3, tv_weight=0.02, attack_lr=None)
BACKDOOR_BASE = dict(target=1, budget=0.005, reward=5.0, alpha=0.5, asr_stop=1.0, target_dim=0)
RGIA_BASE = dict(batch_size=2, num_steps=10, learning_rate=0.1, num_restarts=2, distance="cosine",
                 dynamics_target_only=True, regularizers={"reward": 1.0})
VICTIM_BASE = dict(kind="dqn", obs_dim=4, num_actions=2, hidden=(4,), gamma=0.99, double_q=True, policy_noise=0.2,
                   noise_clip=0.5)
KINDS = {  # kind -> (base, bad table, cross-field invalid changes, oracle, builder)
    "fl": (FL_BASE, FL_BAD, [dict(clients_per_round=4), dict(num_malicious=9), dict(clients_per_round=9),
                             dict(eval_every=3), dict(local_steps=2), dict(knowledge="partial"),
                             dict(aggregator="norm_clip"), dict(batch_size=400)],
           _fl_valid, lambda f: fl.make_simulation(_fl_config(f), DIGITS, MLP)),
    "ppo": (PPO_BASE, PPO_BAD, [dict(total_timesteps=7), dict(num_minibatches=3)], _ppo_valid,
            lambda f: ppo.make_trainer(ppo.PPOConfig(**f), *CARTPOLE)),
    "td3": (TD3_BASE, TD3_BAD, [dict(learning_starts=2), dict(batch_size=3), dict(buffer_size=1, batch_size=1,
                                                                                 num_envs=2, total_timesteps=4)],
            _td3_valid, lambda f: td3.make_trainer(td3.TD3Config(**f), *PENDULUM)),
    "dqn": (DQN_BASE, DQN_BAD, [dict(learning_starts=5), dict(batch_size=9, buffer_size=8, total_timesteps=20)],
            _dqn_valid, lambda f: dqn.make_trainer(dqn.DQNConfig(**f), *CARTPOLE)),
    "decbyzpg": (DEC_BASE, DEC_BAD, [dict(num_byzantine=2), dict(num_byzantine=0), dict(attack="none")],
                 _dec_valid, lambda f: frl.make_decbyzpg(_dec_config(f))),
    "rl_attack": (RL_BASE, RL_BAD, [dict(tau_e=12), dict(action_low=(9.95, 1.0))], _rl_valid,
                  lambda f: ra.RLAttackConfig(**f).validate(RL_FL)),
    "backdoor": (BACKDOOR_BASE, BACKDOOR_BAD, [dict(target=5)], _backdoor_valid,
                 lambda f: backdoor.BackdoorConfig(**f).validate(CARTPOLE_SPEC)),
    "rgia": (RGIA_BASE, RGIA_BAD, [], _rgia_valid, lambda f: rgia.RGIAConfig(**f).validate()),
    "victim": (VICTIM_BASE, VICTIM_BAD, [], _victim_valid, lambda f: rgia.Victim(**f).validate()),
}
SWEEP = [(kind, field, bad) for kind, (_, table, _, _, _) in KINDS.items() for field in sorted(table)
         for bad in table[field]]
CROSS = [(kind, i) for kind, (_, _, cross, _, _) in KINDS.items() for i in range(len(cross))]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_bases_are_valid(kind):
    base, _, _, oracle, build = KINDS[kind]
    assert oracle(base)
    build(base)


@pytest.mark.parametrize("kind, field, bad", SWEEP, ids=[f"{k}-{f}-{b!r}" for k, f, b in SWEEP])
def test_every_bad_value_raises_naming_its_field(kind, field, bad):
    base, _, _, oracle, build = KINDS[kind]
    fields = {**base, field: bad}
    assert not oracle(fields)
    _check(oracle, (fields, field, base), build)


@pytest.mark.parametrize("kind, index", CROSS)
def test_cross_field_rules_raise(kind, index):
    base, _, cross, oracle, build = KINDS[kind]
    fields = {**base, **cross[index]}
    assert not oracle(fields)
    _check(oracle, (fields, None, base), build)

# Two more compiles each (TD3's replay, DecByzPG's blocks): the slow suite runs them; FL and PPO runs stay fast.
test_td3_valid_configs_run_two_iterations_without_nan = pytest.mark.slow(test_td3_valid_configs_run_two_iterations_without_nan)
test_decbyzpg_valid_configs_run_two_iterations_without_nan = pytest.mark.slow(
    test_decbyzpg_valid_configs_run_two_iterations_without_nan)
