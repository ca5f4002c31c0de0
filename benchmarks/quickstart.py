"""The main job (`make demo`): FL on the embedded digits data with and without attacks, under each defense.

K=100 clients, M=20 malicious, w=10 sampled per round, FedSGD, 3 seeds vmapped per cell. Prints a table of final
test accuracy (mean +- std over seeds), writes ``results.json`` and ``quickstart.png`` into ``--out``.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from benchmarks.common import parser, write_results
from fedjax_attacks import aggregators, attacks, data, fl, models

# Hyperparameters for w = 10 sampled clients, of whom 2 are malicious on average.
AGGREGATORS = {
    "mean": {},
    "median": {},
    "trimmed_mean": {"num_trim": 2},
    "krum": {"num_byzantine": 2},
    "geometric_median": {},
    "clipped_median": {},
    "fltrust": {},
}
ATTACKS = {"none": {}, "ipm": {"eps": 5.0}, "lmp": {"variant": "median"}, "alie": {}, "minmax": {}}


def main(argv=None):
    p = parser("quickstart", __doc__)
    p.add_argument("--rounds", type=int, default=500)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--model", default="mlp")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seeds = 100, 2
    dataset = data.load("digits")
    model = models.get(args.model, dataset.num_classes, dataset.input_shape)
    base = fl.FLConfig(num_clients=100, num_malicious=20, clients_per_round=10, batch_size=8, lr=0.1,
                       rounds=args.rounds, eval_every=args.rounds // 10)
    agg_names = [a for a in AGGREGATORS if a in aggregators.names()]
    attack_names = [a for a in ATTACKS if a in attacks.names()]
    keys = jax.random.split(jax.random.PRNGKey(0), args.seeds)
    cells, curves = {}, {}
    start = time.perf_counter()
    print(f"FL on digits: K={base.num_clients}, M={base.num_malicious}, w={base.clients_per_round}, "
          f"{args.rounds} rounds, {args.seeds} seeds vmapped, model {args.model} ({model.num_params} params)")
    members = [(a, ATTACKS[a]) for a in attack_names]
    for agg in tqdm(agg_names, desc="defenses (each compiled once for all attacks)", unit="defense"):
        config = dataclasses.replace(base, aggregator=agg, aggregator_hparams=AGGREGATORS[agg])
        sweep = fl.make_attack_sweep(config, dataset, model, members)
        for i, attack in enumerate(attack_names):
            history = sweep(keys, jnp.int32(i))
            acc = np.asarray(history.test_accuracy)
            cells[f"{attack}|{agg}"] = {"attack": attack, "aggregator": agg,
                                        "final_accuracy_mean": acc[:, -1].mean(), "final_accuracy_std": acc[:, -1].std()}
            curves[f"{attack}|{agg}"] = acc.mean(0)
    wall = time.perf_counter() - start
    rounds_axis = np.asarray(history.round[0])
    _print_table(cells, attack_names, agg_names)
    print(f"total wall time {wall:.1f} s (compiles included) on {jax.devices()[0].platform}")
    results = {"config": dataclasses.asdict(base), "aggregator_hparams": AGGREGATORS, "attack_hparams": ATTACKS,
               "seeds": args.seeds, "model": args.model, "cells": cells,
               "curves": {k: {"round": rounds_axis, "test_accuracy": v} for k, v in curves.items()},
               "wall_time_s": wall}
    path = write_results(args.out, results)
    _plot(cells, curves, rounds_axis, attack_names, agg_names, args.out)
    print(f"wrote {path} and {args.out}/quickstart.png")
    return results


def _print_table(cells, attack_names, agg_names):
    width = max(len(a) for a in agg_names) + 2
    print("final test accuracy (mean +- std over seeds)")
    print(" " * 8 + "".join(f"{a:>{width + 6}}" for a in agg_names))
    for attack in attack_names:
        row = "".join(f"{cells[f'{attack}|{a}']['final_accuracy_mean']:>{width}.3f}"
                      f"+-{cells[f'{attack}|{a}']['final_accuracy_std']:.2f}" for a in agg_names)
        print(f"{attack:<8}{row}")


def _plot(cells, curves, rounds_axis, attack_names, agg_names, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(attack_names), figsize=(4 * len(attack_names), 3.5), sharey=True, squeeze=False)
    for ax, attack in zip(axes[0], attack_names):
        for agg in agg_names:
            ax.plot(rounds_axis, curves[f"{attack}|{agg}"], label=agg)
        ax.set_title(f"attack: {attack}")
        ax.set_xlabel("round")
    axes[0, 0].set_ylabel("test accuracy")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{out}/quickstart.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
