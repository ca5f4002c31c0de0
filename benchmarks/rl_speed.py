"""Speed and return of the functional RL algorithms (issue 6): PPO, TD3, DQN, PPO on brax, vmapped seeds.

Measures, in one run on the current JAX device:
  * PPO on CartPole-v1 (16 envs x 128 steps, 500k steps): compile time, env steps/s, evaluation return;
  * the same PPO for S seeds at once with ``jax.vmap`` against S sequential runs of the compiled single-seed
    function (the in-run baseline: ratio of wall times);
  * TD3 on Pendulum-v1 (50k steps): steps/s and evaluation return;
  * double DQN on CartPole-v1: steps/s and evaluation return;
  * PPO (continuous, observation normalization) on a brax environment: steps/s and return.
Wall time and process CPU time are both recorded (CPU time shows how much of a shared machine a run
got). The rejax 0.1.3 anchor from the issue (2-core CPU; PPO 216k steps/s with return 492, TD3 1,040 steps/s with
return -147) is printed next to the measurements for reference; it is not re-measured here.
"""

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from tqdm import tqdm

from benchmarks import common
from fedjax_attacks import rl
from fedjax_attacks.rl import dqn, ppo, td3

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REJAX_ANCHOR = {"ppo_cartpole_steps_per_s": 216_000, "ppo_cartpole_return": 492, "ppo_compile_s": 7.4,
                "td3_pendulum_steps_per_s": 1_040, "td3_pendulum_return": -147}
TARGETS = {"ppo_cartpole_return": 475, "ppo_cartpole_steps_per_s": 216_000, "td3_pendulum_return": -200,
           "td3_pendulum_steps_per_s": 1_040}


def _compile(fn, *args):
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def _timed(compiled, arg, repeats):
    """Runs ``compiled(arg)`` ``repeats`` times; returns the output, median wall seconds and median CPU seconds.

    CPU seconds (this process, all threads) show how much of the machine the run really got when other
    processes share the cores: on an idle machine wall time approaches CPU time / number of busy threads.
    """
    times, cpu, out = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = jax.block_until_ready(compiled(arg))
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return out, float(np.median(times)), float(np.median(cpu))


def _eval(policy, env, params, episodes, max_steps, seed=123):
    returns = jax.jit(lambda k: rl.evaluate_policy(k, policy, env, params, episodes, max_steps))(
        jax.random.key(seed))
    return float(jnp.mean(returns))


def _curve(returns, steps_per_point):
    r = np.asarray(returns, dtype=np.float64)
    x = (np.arange(len(r)) + 1) * steps_per_point
    keep = ~np.isnan(r)
    return x[keep].tolist(), r[keep].tolist()


def run_ppo(args, bar):
    env, params = rl.make("CartPole-v1")
    # 8 minibatches of 256: on XLA's CPU backend a 512-row minibatch (4 minibatches) costs ~1.7x more per
    # sample in the update (measured 0.47 ms vs 0.14 ms per gradient of 512 vs 256 rows), see --ppo-minibatches
    cfg = ppo.PPOConfig(total_timesteps=args.ppo_steps, num_envs=16, num_steps=128, learning_rate=1e-3,
                        ent_coef=0.0, num_minibatches=args.ppo_minibatches)
    compiled, compile_s = _compile(ppo.make_train(cfg, env, params), jax.random.key(0))
    out, run_s, cpu_s = _timed(compiled, jax.random.key(0), args.repeats)
    steps = cfg.num_updates * cfg.batch_size
    policy = ppo.make_policy(cfg, env, params, out.train_state.params)
    result = {"config": dataclasses.asdict(cfg), "compile_s": compile_s, "run_s": run_s, "env_steps": steps,
              "steps_per_s": steps / run_s, "cpu_s": cpu_s, "steps_per_cpu_s": steps / cpu_s,
              "eval_return": _eval(policy, env, params, args.eval_episodes, 500),
              "curve": _curve(out.metrics["episode_return"], cfg.batch_size)}
    bar.update()

    # S seeds: one vmapped call against S sequential calls of the compiled single-seed function.
    seed_cfg = dataclasses.replace(cfg, total_timesteps=args.seed_steps)
    train = ppo.make_train(seed_cfg, env, params)
    single, _ = _compile(train, jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), args.seeds)
    start = time.perf_counter()
    seq_returns = []
    for k in tqdm(keys, desc="sequential seeds", leave=False):
        seq_returns.append(np.asarray(jax.block_until_ready(single(k)).metrics["episode_return"]))
    sequential_s = time.perf_counter() - start
    batched, vmap_compile_s = _compile(jax.vmap(train), keys)
    out, vmapped_s, _ = _timed(batched, keys, 1)
    seed_steps = args.seeds * seed_cfg.num_updates * seed_cfg.batch_size
    final = np.asarray(out.metrics["episode_return"])[:, -5:]
    result["seeds"] = {"num_seeds": args.seeds, "steps_per_seed": seed_cfg.num_updates * seed_cfg.batch_size,
                       "sequential_s": sequential_s, "vmapped_s": vmapped_s, "vmap_compile_s": vmap_compile_s,
                       "speedup_vmapped_over_sequential": sequential_s / vmapped_s,
                       "sequential_steps_per_s": seed_steps / sequential_s,
                       "vmapped_steps_per_s": seed_steps / vmapped_s,
                       "final_train_return_per_seed_vmapped": np.nanmean(final, axis=1).tolist(),
                       "final_train_return_per_seed_sequential": np.nanmean(
                           np.stack(seq_returns)[:, -5:], axis=1).tolist()}
    bar.update()
    return result


def run_td3(args, bar):
    env, params = rl.make("Pendulum-v1")
    cfg = td3.TD3Config(total_timesteps=args.td3_steps, learning_starts=min(1_000, args.td3_steps // 2),
                        hidden=(64, 64), batch_size=128, learning_rate=1e-3)
    compiled, compile_s = _compile(td3.make_train(cfg, env, params), jax.random.key(0))
    out, run_s, cpu_s = _timed(compiled, jax.random.key(0), 1)
    policy = td3.make_policy(cfg, env, params, out.learner.actor.params)
    bar.update()
    return {"config": dataclasses.asdict(cfg), "compile_s": compile_s, "run_s": run_s, "cpu_s": cpu_s,
            "steps_per_s": cfg.total_timesteps / run_s, "steps_per_cpu_s": cfg.total_timesteps / cpu_s,
            "eval_return": _eval(policy, env, params, args.eval_episodes, 200),
            "curve": _curve(out.metrics["episode_return"], cfg.num_envs)}


def run_dqn(args, bar):
    """Double DQN on CartPole over ``--dqn-seeds`` seeds, vmapped: one seed's evaluation is not a measurement
    (on the 2-core CPU 7 of 8 seeds reach 500 and one stays near 40; the H100's single seed gave 100.7)."""
    env, params = rl.make("CartPole-v1")
    cfg = dqn.DQNConfig(total_timesteps=args.dqn_steps, learning_starts=min(1_000, args.dqn_steps // 2),
                        exploration_fraction=0.2, train_frequency=1, batch_size=64,
                        target_network_frequency=100, learning_rate=1e-3, hidden=(64, 64))
    keys = jax.random.split(jax.random.key(0), args.dqn_seeds)
    compiled, compile_s = _compile(jax.vmap(dqn.make_train(cfg, env, params)), keys)
    out, run_s, _ = _timed(compiled, keys, 1)

    def evaluate(q_params, key):
        policy = dqn.make_policy(cfg, env, params, q_params)
        return jnp.mean(rl.evaluate_policy(key, policy, env, params, args.eval_episodes, 500))

    returns = np.asarray(jax.jit(jax.vmap(evaluate, in_axes=(0, None)))(out.q_state.params, jax.random.key(123)))
    bar.update()
    return {"config": dataclasses.asdict(cfg), "num_seeds": args.dqn_seeds, "compile_s": compile_s, "run_s": run_s,
            "steps_per_s": args.dqn_seeds * cfg.total_timesteps / run_s,
            "eval_returns": returns.tolist(), "eval_return": float(np.mean(returns)),
            "eval_return_median": float(np.median(returns)), "solved_fraction": float(np.mean(returns >= 475)),
            "curve": _curve(_seed_mean(out.metrics["episode_return"]), cfg.num_envs)}


def _seed_mean(returns):
    """Mean over the leading seed axis of the seeds that finished an episode at each point (NaN where none did)."""
    r = np.asarray(returns, np.float64)
    finished = ~np.isnan(r)
    count = finished.sum(axis=0)
    return np.where(count > 0, np.where(finished, r, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)


def run_brax_ppo(args, bar):
    env, params = rl.make(f"brax:{args.brax_env}", episode_length=args.brax_episode_length)
    cfg = ppo.PPOConfig(total_timesteps=args.brax_steps, num_envs=16, num_steps=64, learning_rate=3e-4,
                        num_minibatches=4, update_epochs=4, ent_coef=0.0, normalize_observations=True)
    compiled, compile_s = _compile(ppo.make_train(cfg, env, params), jax.random.key(0))
    out, run_s, _ = _timed(compiled, jax.random.key(0), 1)
    steps = cfg.num_updates * cfg.batch_size
    bar.update()
    return {"env": args.brax_env, "config": dataclasses.asdict(cfg), "compile_s": compile_s, "run_s": run_s,
            "steps_per_s": steps / run_s, "curve": _curve(out.metrics["episode_return"], cfg.batch_size)}


def plot(results, path):
    panels = [(n, t) for n, t in [("ppo", "PPO CartPole-v1"), ("td3", "TD3 Pendulum-v1"),
                                  ("dqn", "DQN CartPole-v1"), ("brax_ppo", "PPO brax")] if n in results]
    fig, axes = plt.subplots(1, len(panels) + ("ppo" in results), figsize=(5 * len(panels) + 5, 4), squeeze=False)
    for ax, (name, title) in zip(axes[0], panels):
        x, y = results[name]["curve"]
        ax.plot(x, y, lw=0.8)
        ax.set(title=title, xlabel="env steps", ylabel="episode return")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    if "ppo" in results:
        s = results["ppo"]["seeds"]
        axes[0, -1].bar(["sequential", "vmapped"], [s["sequential_steps_per_s"], s["vmapped_steps_per_s"]])
        axes[0, -1].set(title=f"PPO, {s['num_seeds']} seeds: x{s['speedup_vmapped_over_sequential']:.1f}",
                        ylabel="env steps / s")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    p = common.parser("rl_speed", __doc__.splitlines()[0])
    p.add_argument("--ppo-steps", type=int, default=500_000)
    p.add_argument("--ppo-minibatches", type=int, default=8, help="PPO minibatches per epoch (16 x 128 steps)")
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--seed-steps", type=int, default=500_000, help="PPO steps per seed in the seeds comparison")
    p.add_argument("--td3-steps", type=int, default=50_000)
    p.add_argument("--dqn-steps", type=int, default=100_000)
    p.add_argument("--dqn-seeds", type=int, default=8, help="DQN seeds trained at once (vmapped)")
    p.add_argument("--brax-env", default="inverted_pendulum")
    p.add_argument("--brax-steps", type=int, default=204_800)
    p.add_argument("--brax-episode-length", type=int, default=1000)
    p.add_argument("--eval-episodes", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2, help="timed repeats of the PPO run (median)")
    p.add_argument("--sections", default="ppo,td3,dqn,brax_ppo", help="comma-separated subset to run")
    args = p.parse_args(argv)
    if args.quick:
        args.ppo_steps, args.seeds, args.seed_steps = 16_384, 4, 8_192
        args.td3_steps, args.dqn_steps, args.brax_steps, args.dqn_seeds = 2_000, 3_000, 2_048, 2
        args.brax_episode_length, args.eval_episodes, args.repeats = 100, 4, 1

    sections = args.sections.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}: choose from {list(SECTIONS)}")

    start = time.perf_counter()
    results = {"args": vars(args), "rejax_anchor": REJAX_ANCHOR, "targets": TARGETS}
    with tqdm(total=sum(SECTIONS[name][1] for name in sections), desc="rl_speed") as bar:
        for name in sections:
            results[name] = SECTIONS[name][0](args, bar)
    results["total_wall_s"] = time.perf_counter() - start
    met = {}
    for name in ("ppo", "td3"):
        if name in results:
            env_name = "cartpole" if name == "ppo" else "pendulum"
            met[f"{name}_{env_name}_return"] = results[name]["eval_return"] >= TARGETS[f"{name}_{env_name}_return"]
            met[f"{name}_{env_name}_steps_per_s"] = (results[name]["steps_per_s"]
                                                     >= TARGETS[f"{name}_{env_name}_steps_per_s"])
    results["targets_met"] = met
    os.makedirs(args.out, exist_ok=True)
    plot(results, os.path.join(args.out, "rl_speed.png"))
    path = common.write_results(args.out, results)

    print(f"device: {jax.devices()}")
    if "ppo" in results:
        r, s = results["ppo"], results["ppo"]["seeds"]
        print(f"PPO CartPole: {r['env_steps']} steps in {r['run_s']:.2f} s after {r['compile_s']:.1f} s compile = "
              f"{r['steps_per_s']:,.0f} steps/s ({r['cpu_s']:.2f} CPU-s, {r['steps_per_cpu_s']:,.0f} steps/CPU-s), "
              f"eval return {r['eval_return']:.1f} (rejax anchor: 216,000 steps/s, 492)")
        print(f"PPO {s['num_seeds']} seeds x {s['steps_per_seed']} steps: sequential {s['sequential_s']:.2f} s, "
              f"vmapped {s['vmapped_s']:.2f} s -> x{s['speedup_vmapped_over_sequential']:.2f} "
              f"({s['vmapped_steps_per_s']:,.0f} steps/s)")
    if "td3" in results:
        r = results["td3"]
        print(f"TD3 Pendulum: {r['steps_per_s']:,.0f} steps/s ({r['steps_per_cpu_s']:,.0f} steps/CPU-s), "
              f"eval return {r['eval_return']:.1f} "
              f"(rejax anchor: 1,040 steps/s, -147)")
    if "dqn" in results:
        r = results["dqn"]
        print(f"DQN CartPole, {r['num_seeds']} seeds: {r['steps_per_s']:,.0f} steps/s, eval return mean "
              f"{r['eval_return']:.1f}, median {r['eval_return_median']:.1f}, solved {r['solved_fraction']:.0%} "
              f"(per seed: {', '.join(f'{x:.0f}' for x in r['eval_returns'])})")
    if "brax_ppo" in results:
        r = results["brax_ppo"]
        last = r["curve"][1][-1] if r["curve"][1] else float("nan")
        print(f"PPO brax:{r['env']}: {r['steps_per_s']:,.0f} steps/s, last train return {last:.1f}")
    print(f"targets met: {met}; wrote {path}")
    return results


SECTIONS = {"ppo": (run_ppo, 2), "td3": (run_td3, 1), "dqn": (run_dqn, 1), "brax_ppo": (run_brax_ppo, 1)}

if __name__ == "__main__":
    main()
