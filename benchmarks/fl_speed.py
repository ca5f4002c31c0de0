"""Speed of the jitted FL run against a per-client PyTorch loop like the papers' code.

Same configuration on both sides: FedSGD, K=100 clients, w=10 sampled per round, one SGD step each, mean
aggregation, test evaluation every ``eval_every`` rounds. The baseline (the seed paper's reference style) keeps one
model, loops over the sampled clients in Python, computes each gradient, stacks, averages and updates.
Measured: (1) one run, digits MLP, 1000 rounds; (2) 16 seeds, ``jax.vmap`` against 16 sequential loop runs;
(3) the paper's MNIST CNN on 28x28 inputs (MNIST from ``--mnist-dir`` if given, else synthetic data of MNIST's shape).
Prints rounds/s and ratios; writes ``results.json`` and ``fl_speed.png``. PyTorch is optional (``make bench-deps``);
it runs on ``--torch-device`` (default: CUDA when a GPU is present, else the CPU), recorded beside JAX's device.
"""

import dataclasses
import time

import jax
import numpy as np

from benchmarks.aggregators_speed import devices_record, torch_device, torch_synchronize
from benchmarks.common import parser, write_results
from fedjax_attacks import data, fl, models


def time_jax(config, dataset, model, num_seeds):
    """(compile_s, run_s, final accuracy per seed) for ``num_seeds`` vmapped runs.

    One seed runs unvmapped: vmapping a conv model over seeds batches its kernels, which XLA's CPU backend lowers
    to a slow grouped convolution.
    """
    single = fl.make_run(config, dataset, model)
    run = jax.jit(jax.vmap(single) if num_seeds > 1 else lambda keys: jax.tree.map(lambda a: a[None], single(keys[0])))
    keys = jax.random.split(jax.random.PRNGKey(0), num_seeds)
    start = time.perf_counter()
    jax.block_until_ready(run(keys))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    _, history = jax.block_until_ready(run(jax.random.split(jax.random.PRNGKey(1), num_seeds)))
    return compile_s, time.perf_counter() - start, np.asarray(history.test_accuracy[:, -1])


def torch_module(name, input_shape, num_classes):
    """The PyTorch twin of ``models.get(name)`` for the two models benchmarked here."""
    import torch.nn as tnn

    if name == "mlp":
        return tnn.Sequential(tnn.Flatten(), tnn.Linear(int(np.prod(input_shape)), 64), tnn.ReLU(),
                              tnn.Linear(64, num_classes))
    if name == "paper_cnn":
        return tnn.Sequential(tnn.Conv2d(input_shape[-1], 64, 8, stride=2, padding=3), tnn.ReLU(),
                              tnn.Conv2d(64, 128, 6, stride=2), tnn.ReLU(), tnn.Conv2d(128, 128, 5), tnn.ReLU(),
                              tnn.Flatten(), tnn.Linear(128, num_classes))
    raise ValueError(f"no PyTorch twin for model {name!r}")


def torch_loop_run(config, dataset, model_name, part, seed, device):
    """One FL run as the papers' code does it: a Python loop over the sampled clients, on ``device`` (the data
    moved there once). Returns final accuracy."""
    import torch
    from torch.nn.utils import parameters_to_vector, vector_to_parameters

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = torch_module(model_name, dataset.input_shape, dataset.num_classes).to(device)
    to_nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(device)
    x_train, y_train = to_nchw(dataset.x_train), torch.from_numpy(dataset.y_train.astype(np.int64)).to(device)
    x_test, y_test = to_nchw(dataset.x_test), torch.from_numpy(dataset.y_test.astype(np.int64)).to(device)
    loss_fn = torch.nn.CrossEntropyLoss()
    accuracy = 0.0
    for t in range(config.rounds):
        grads = []
        for client in rng.choice(config.num_clients, config.clients_per_round, replace=False):
            own = part.client_samples(client)
            idx = torch.from_numpy(rng.choice(own, config.batch_size, replace=False)).to(device)
            net.zero_grad()
            loss_fn(net(x_train[idx]), y_train[idx]).backward()
            grads.append(torch.cat([p.grad.reshape(-1) for p in net.parameters()]))
        aggregate = torch.stack(grads).mean(0)
        with torch.no_grad():
            vector_to_parameters(parameters_to_vector(net.parameters()) - config.lr * aggregate, net.parameters())
        if (t + 1) % config.eval_every == 0:
            with torch.no_grad():
                accuracy = (net(x_test).argmax(1) == y_test).float().mean().item()
    torch_synchronize(device)
    return accuracy


def time_torch(config, dataset, model_name, num_runs, device):
    part = data.partition(dataset.y_train, config.num_clients, config.partition, seed=config.partition_seed)
    start = time.perf_counter()
    accs = [torch_loop_run(config, dataset, model_name, part, seed, device) for seed in range(num_runs)]
    return time.perf_counter() - start, np.asarray(accs)


def synthetic_mnist(num_train=60000, num_test=10000, seed=0):
    """Random 28x28x1 images with random labels: MNIST's shape for speed measurements when no files are given."""
    rng = np.random.default_rng(seed)
    x = rng.random((num_train + num_test, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, num_train + num_test).astype(np.int32)
    return data.Dataset("synthetic_mnist", x[:num_train], y[:num_train], x[num_train:], y[num_train:], 10)


def main(argv=None):
    p = parser("fl_speed", __doc__)
    p.add_argument("--rounds", type=int, default=1000)
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--cnn-rounds", type=int, default=10)
    p.add_argument("--mnist-dir", default=None, help="folder with MNIST IDX files (else synthetic 28x28 data)")
    p.add_argument("--torch-device", default=None,
                   help="PyTorch baseline's device: cpu or cuda (default: cuda when a GPU is present, else cpu)")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seeds, args.cnn_rounds = 100, 4, 10
    device = torch_device(args.torch_device)
    have_torch = device is not None
    if have_torch:
        import torch

        torch.set_num_threads(2)
    else:
        print("PyTorch not installed (make bench-deps): only the JAX side is measured")
    digits = data.load("digits")
    mlp = models.get("mlp", 10, digits.input_shape)
    config = fl.FLConfig(num_clients=100, num_malicious=0, clients_per_round=10, batch_size=8, lr=0.1,
                         rounds=args.rounds, eval_every=args.rounds // 10)
    rows = {}

    def measure(label, cfg, dataset, model, model_name, seeds, torch_runs):
        compile_s, jax_s, jax_acc = time_jax(cfg, dataset, model, seeds)
        row = {"rounds": cfg.rounds, "seeds": seeds, "jax_compile_s": compile_s, "jax_run_s": jax_s,
               "jax_rounds_per_s": cfg.rounds * seeds / jax_s, "jax_final_accuracy": jax_acc.mean()}
        if have_torch:
            torch_s, torch_acc = time_torch(cfg, dataset, model_name, torch_runs, device)
            torch_s *= seeds / torch_runs  # sequential runs scale linearly
            row.update(torch_run_s=torch_s, torch_runs_timed=torch_runs, torch_rounds_per_s=cfg.rounds * seeds / torch_s,
                       torch_final_accuracy=torch_acc.mean(), speedup=torch_s / jax_s,
                       speedup_with_compile=torch_s / (jax_s + compile_s))
        rows[label] = row
        msg = f"{label:<28} JAX {row['jax_rounds_per_s']:>10.0f} rounds/s (compile {compile_s:.1f} s)"
        if have_torch:
            msg += f" | torch loop {row['torch_rounds_per_s']:>8.0f} rounds/s | speed-up x{row['speedup']:.1f}"
        print(msg, flush=True)

    measure("digits MLP, 1 run", config, digits, mlp, "mlp", 1, 1)
    measure(f"digits MLP, {args.seeds} seeds", config, digits, mlp, "mlp", args.seeds, max(2, args.seeds // 4))
    mnist = data.load("mnist", args.mnist_dir) if args.mnist_dir else synthetic_mnist()
    cnn = models.get("paper_cnn", 10, mnist.input_shape)
    cnn_config = dataclasses.replace(config, batch_size=32 if args.quick else 128, rounds=args.cnn_rounds,
                                     eval_every=args.cnn_rounds, lr=0.01, unroll=args.cnn_rounds)
    measure(f"{mnist.name} paper CNN, 1 run", cnn_config, mnist, cnn, "paper_cnn", 1, 1)
    results = {"config": dataclasses.asdict(config), "cnn_config": dataclasses.asdict(cnn_config),
               "have_torch": have_torch, "torch_device": None if device is None else str(device),
               "devices": devices_record(device), "measurements": rows}
    path = write_results(args.out, results)
    _plot(rows, args.out, have_torch)
    print(f"wrote {path}")
    return results


def _plot(rows, out, have_torch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(rows)
    xs = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(xs - 0.2, [rows[k]["jax_rounds_per_s"] for k in labels], 0.4, label="fedjax_attacks (jit + vmap)")
    if have_torch:
        ax.bar(xs + 0.2, [rows[k]["torch_rounds_per_s"] for k in labels], 0.4, label="PyTorch per-client loop")
    ax.set_yscale("log")
    ax.set_xticks(xs, labels, fontsize=8)
    ax.set_ylabel("FL rounds per second (x seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(f"{out}/fl_speed.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
