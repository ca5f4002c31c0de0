"""Attack x defense matrix: final test accuracy of FedSGD under every attack (rows) and robust rule (columns).

Default setting (issue 4): digits, MLP, K=100 clients, M=20 malicious, w=10 sampled per round, 500 rounds,
3 seeds vmapped, full knowledge, iid. ``--paper`` switches to the seed paper's setting (MNIST, its CNN, 1000 rounds,
lr 0.01, batch 128, q=0.5 non-iid; needs ``--data-dir`` with the MNIST IDX files).

Compilation dominates on a CPU (the runs take well under a second each), so each defense column is compiled once:
the attacks sit behind ``attacks.switch`` on an int32 index passed to the jitted run, and the rows of a column
reuse that executable. The ``none`` row is the no-attack baseline measured in the same run; a cell counts as
broken when the attack lowers the mean accuracy by at least ``--broken-drop`` (default 0.2) below it.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from tqdm.auto import tqdm

from benchmarks import common
from fedjax_attacks import attacks, data, fl, models

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ATTACKS = {
    "none": ("none", {}),
    "eb": ("eb", {}),
    "ipm": ("ipm", {"eps": 5.0}),
    "lmp_median": ("lmp", {"variant": "median", "b": 2.0}),
    "lmp_krum": ("lmp", {"variant": "krum"}),
    "alie": ("alie", {}),
    "minmax": ("minmax", {"perturbation": "std"}),
    "minsum": ("minsum", {"perturbation": "std"}),
    "sign_flip": ("sign_flip", {}),
    "gaussian": ("gaussian", {"sigma": 200.0}),
    "large_noise": ("large_noise", {"a": 1000.0}),
    "avg_zero": ("avg_zero", {}),
    "label_flip": ("label_flip", {}),
}
DEFENSES = {
    "mean": ("mean", {}),
    "median": ("median", {}),
    "trimmed_mean": ("trimmed_mean", {"num_trim": 2}),
    "krum": ("krum", {"num_byzantine": 2}),
    "geometric_median": ("geometric_median", {}),
    "clipped_median": ("clipped_median", {"max_norm": 2.0}),
    "fltrust": ("fltrust", {}),
    "centered_clipping": ("centered_clipping", {"tau": 1.0}),  # ~ the honest updates' spread (norms ~1-2)
    "bucketing_krum": ("bucketing", {"aggregator": "krum", "num_byzantine": 1, "bucket_size": 2}),
}
QUICK_ATTACKS = ("none", "lmp_krum", "label_flip")
QUICK_DEFENSES = ("krum",)


def main(argv=None):
    """Runs the matrix (``argv`` as on the command line), writes ``results.json`` and the heatmap, returns results."""
    p = common.parser("attack_matrix", __doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=500)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-clients", type=int, default=100)
    p.add_argument("--num-malicious", type=int, default=20)
    p.add_argument("--clients-per-round", type=int, default=10)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--model", default="mlp")
    p.add_argument("--partition", default="iid", choices=("iid", "q_noniid", "dirichlet"))
    p.add_argument("--q", type=float, default=0.5)
    p.add_argument("--knowledge", default="full", choices=("full", "partial"),
                   help="partial drops the attacks that need the benign updates")
    p.add_argument("--attacks", default=",".join(ATTACKS), help="comma-separated rows (default: all)")
    p.add_argument("--defenses", default=",".join(DEFENSES), help="comma-separated columns (default: all)")
    p.add_argument("--broken-drop", type=float, default=0.2)
    p.add_argument("--paper", action="store_true",
                   help="the seed paper's setting: mnist, paper_cnn, 1000 rounds, lr 0.01, batch 128, q_noniid")
    args = p.parse_args(argv)
    if args.paper:
        args.dataset, args.model, args.rounds, args.lr, args.batch_size = "mnist", "paper_cnn", 1000, 0.01, 128
        args.partition, args.eval_every = "q_noniid", 100
    if args.quick:
        args.rounds, args.eval_every, args.seeds = 10, 5, 2
        args.attacks, args.defenses = ",".join(QUICK_ATTACKS), ",".join(QUICK_DEFENSES)
    attack_names = _select(args.attacks, ATTACKS, "attack")
    defense_names = _select(args.defenses, DEFENSES, "defense")
    if args.knowledge == "partial":
        attack_names = [a for a in attack_names
                        if not attacks.get(ATTACKS[a][0], **ATTACKS[a][1]).needs_full_knowledge]

    dataset = data.load(args.dataset, args.data_dir)
    model = models.get(args.model, num_classes=dataset.num_classes, input_shape=dataset.input_shape)
    base = fl.FLConfig(num_clients=args.num_clients, num_malicious=args.num_malicious,
                       clients_per_round=args.clients_per_round, batch_size=args.batch_size, lr=args.lr,
                       rounds=args.rounds, eval_every=args.eval_every, mode="fedsgd", knowledge=args.knowledge,
                       partition=args.partition, q=args.q)
    members = tuple(ATTACKS[a] for a in attack_names)
    keys = jax.random.split(jax.random.PRNGKey(0), args.seeds)

    start = time.perf_counter()
    accuracy = np.zeros((len(attack_names), len(defense_names), args.seeds, args.rounds // args.eval_every))
    compile_s, run_s = {}, {}
    with tqdm(total=len(attack_names) * len(defense_names), desc="attack x defense cells", unit="cell") as bar:
        for j, defense in enumerate(defense_names):
            rule, hparams = DEFENSES[defense]
            config = dataclasses.replace(base, aggregator=rule, aggregator_hparams=hparams)
            column = fl.make_attack_sweep(config, dataset, model, members)
            t0 = time.perf_counter()
            compiled = column.lower(keys, jnp.int32(0)).compile()
            compile_s[defense] = time.perf_counter() - t0
            for i, attack in enumerate(attack_names):
                t0 = time.perf_counter()
                history = compiled(keys, jnp.int32(i))
                accuracy[i, j] = np.asarray(jax.block_until_ready(history.test_accuracy))
                run_s[f"{attack}/{defense}"] = time.perf_counter() - t0
                bar.update(1)
    total = time.perf_counter() - start

    final = accuracy[..., -1]
    mean, std = final.mean(-1), final.std(-1)
    baseline = mean[attack_names.index("none")] if "none" in attack_names else None
    broken = {}
    if baseline is not None:
        for i, attack in enumerate(attack_names):
            broken[attack] = [d for j, d in enumerate(defense_names) if baseline[j] - mean[i, j] >= args.broken_drop]
    results = {
        "config": {**vars(args), "fl": dataclasses.asdict(base),
                   "attacks": {a: ATTACKS[a] for a in attack_names},
                   "defenses": {d: DEFENSES[d] for d in defense_names}},
        "attacks": attack_names,
        "defenses": defense_names,
        "final_accuracy": final,
        "final_accuracy_mean": mean,
        "final_accuracy_std": std,
        "accuracy_curves": accuracy,
        "eval_rounds": list(range(args.eval_every, args.rounds + 1, args.eval_every)),
        "no_attack_baseline": baseline,
        "broken": broken,
        "broken_criterion": f"mean final accuracy at least {args.broken_drop} below the 'none' row",
        "wall_time_s": {"total": total, "compile_per_defense": compile_s, "run_per_cell": run_s},
        "figures": ["attack_matrix.png"],
    }
    common.write_results(args.out, results)
    _plot(args.out, attack_names, defense_names, mean, std, args)
    _print_table(attack_names, defense_names, mean, std, broken, total, compile_s)
    return results


def _select(spec, table, kind):
    names = [n for n in spec.split(",") if n]
    unknown = [n for n in names if n not in table]
    if unknown or not names:
        raise ValueError(f"unknown {kind}(s) {unknown}; known: {', '.join(table)}")
    return names


def _plot(out_dir, attack_names, defense_names, mean, std, args):
    fig, ax = plt.subplots(figsize=(1.1 * len(defense_names) + 2.5, 0.5 * len(attack_names) + 2))
    im = ax.imshow(mean, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    for i in range(len(attack_names)):
        for j in range(len(defense_names)):
            ax.text(j, i, f"{mean[i, j]:.2f}\n±{std[i, j]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(defense_names)), defense_names, rotation=35, ha="right")
    ax.set_yticks(range(len(attack_names)), attack_names)
    ax.set_title(f"Final test accuracy (mean ± std over {args.seeds} seeds)\n{args.dataset}/{args.model}, "
                 f"K={args.num_clients}, M={args.num_malicious}, w={args.clients_per_round}, {args.rounds} rounds",
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(f"{out_dir}/attack_matrix.png", dpi=130)
    plt.close(fig)


def _print_table(attack_names, defense_names, mean, std, broken, total, compile_s):
    width = max(len(d) for d in defense_names) + 1
    print("final test accuracy (mean over seeds)")
    print(" " * 12 + "".join(d.rjust(width) for d in defense_names))
    for i, attack in enumerate(attack_names):
        print(attack.ljust(12) + "".join(f"{mean[i, j]:.3f}".rjust(width) for j in range(len(defense_names))))
    for attack, defenses in broken.items():
        if attack != "none":
            print(f"{attack} breaks: {', '.join(defenses) or '-'}")
    print(f"total wall time {total:.1f} s (compile {sum(compile_s.values()):.1f} s)")


if __name__ == "__main__":
    main()
