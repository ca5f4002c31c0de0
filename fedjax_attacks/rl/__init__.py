"""Functional RL: gymnax-shaped environments (gymnax, brax, own simulators), wrappers, PPO, TD3, DQN.

Each algorithm is ``make_train(config, env, env_params) -> train(key)``: one jittable function, vmappable over
seeds (``make_seed_batch(train, mesh=None)`` does it, splitting the seeds over a mesh's ``"seeds"`` axis). See
``env`` for the environment interface and ``ppo`` for the poisoning hooks.
"""

from fedjax_attacks.rl import dqn, env, evaluate, gae, networks, ppo, replay, td3, wrappers
from fedjax_attacks.rl.env import make, spec
from fedjax_attacks.rl.evaluate import evaluate as evaluate_policy, export_params, import_params
from fedjax_attacks.rl import policy_gradient
from fedjax_attacks.rl.seeds import make_seed_batch
