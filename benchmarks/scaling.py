"""Cross-device FL on 1, 2 and 4 devices: rounds/s and peak memory per device, plus seeds/s of a sharded sweep.

FedSGD with K=10,000 clients, w=1,000 sampled per round, the seed paper's MNIST CNN (d = 710,218) on synthetic
28x28x1 images (B per client, so every client holds exactly one batch), under mean, median, Krum (f = w/10) and the
clipped median; the sampled clients' updates are split over the mesh's ``"clients"`` axis
(``fl.make_run(..., mesh=sharding.make_mesh(clients=n))``). ``--skip-run`` only compiles (the memory figures need
no run: a CPU takes minutes per round at w=1,000, about 430 CPU-s on one forced device, since XLA's CPU backend
is slow at per-client convolution gradients); ``--quick`` uses small K and w and an MLP. Each device count runs in
its own process, because ``XLA_FLAGS=--xla_force_host_platform_device_count=n`` must be set before jax is imported:
on a CPU host the n devices are forced host devices sharing the same cores (so rounds/s is no hardware speed-up:
memory per device is what shrinks; the total CPU-seconds still fell, 135 on 4 devices against 434 on 1 per round at
w=1,000, because XLA's CPU convolution over a vmapped client axis costs more per client the more clients one
device holds); on a GPU/TPU host they are the real accelerators. Peak memory per device is XLA's
compiled-memory analysis (arguments + outputs + temporaries - aliased; the dataset, a constant of the program,
adds K * B * 3.1 kB on every device and is counted in the memory model). The memory model: bytes per sampled client
(the slope between w and w/2, measured) and the data's bytes per client (K). The median and the clipped median
take their order statistics with the library's default (``--order-method default``): XLA's sort on GPU/TPU and,
on a CPU, above 128 clients (the unrolled sorting network has O(w log^2 w) comparators: at w=1,000 compiling it
took over 22 GB of host memory, at w=400 8.7 GB and 160 s). Every record also carries the process CPU seconds and the load
average, and is appended to ``records.jsonl`` as it arrives (a crash keeps the finished rows).
The sweep: ``fl.make_attack_sweep(..., mesh=make_mesh(seeds=n))`` on digits (MLP, K=100, w=10), seeds per second.
Writes ``results.json`` and ``scaling.png``.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import jax
import numpy as np

from benchmarks.common import parser, write_results
from fedjax_attacks import data, fl, models, sharding

AGGREGATORS = ("mean", "median", "krum", "clipped_median")
GB = 1e9


def main(argv=None):
    p = parser("scaling", __doc__)
    # (full size, --quick): flags left out take the first value, or the second under --quick
    sizes = {"num_clients": (10_000, 400), "clients_per_round": (1_000, 16), "rounds": (2, 2),
             "devices": ("1,2,4", "1,4"), "aggregators": (",".join(AGGREGATORS), "mean,krum"),
             "model": ("paper_cnn", "mlp"), "sweep_seeds": (8, 4), "sweep_rounds": (100, 20)}
    p.add_argument("--num-clients", type=int, help="K (10,000; quick 400)")
    p.add_argument("--clients-per-round", type=int, help="w (1,000; quick 16)")
    p.add_argument("--batch-size", type=int, default=8, help="B, also each client's data (default: %(default)s)")
    p.add_argument("--rounds", type=int, help="rounds timed per run (2)")
    p.add_argument("--devices", help="device counts (1,2,4; quick 1,4)")
    p.add_argument("--aggregators", help=f"comma-separated ({','.join(AGGREGATORS)}; quick mean,krum)")
    p.add_argument("--model", help="models.get name for 28x28x1 inputs (paper_cnn; quick mlp)")
    p.add_argument("--skip-run", action="store_true", help="compile only: memory figures, no rounds/s")
    p.add_argument("--sweep-seeds", type=int, help="seeds of the sweep (8; quick 4)")
    p.add_argument("--sweep-rounds", type=int, help="rounds of the sweep (100; quick 20)")
    p.add_argument("--order-method", choices=("sort", "network", "default"), default="default",
                   help="order statistics of median / clipped_median: XLA's sort, the sorting network, or the "
                        "library's backend default (default: %(default)s)")
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # internal: one device count
    args = p.parse_args(argv)
    for name, (full, quick) in sizes.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.worker:
        return worker(args)
    from tqdm.auto import tqdm

    counts = [int(n) for n in args.devices.split(",")]
    aggregator_names = args.aggregators.split(",")
    for n in counts:
        if args.clients_per_round % n or args.sweep_seeds % n:
            raise ValueError(f"--devices {n} must divide w={args.clients_per_round} and --sweep-seeds "
                             f"{args.sweep_seeds}")
    config = {k: v for k, v in vars(args).items() if k not in ("worker", "out")}
    rows, sweeps, skipped = [], [], []
    start = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "records.jsonl"), "w") as partial, \
            tqdm(total=len(counts) * (len(aggregator_names) + 1), desc="scaling", unit="run") as bar:
        for n in counts:
            for record in run_worker(n, argv if argv is not None else sys.argv[1:]):
                partial.write(json.dumps(record) + "\n")
                partial.flush()
                if record["kind"] == "fl":
                    rows.append(record)
                    bar.set_postfix(devices=n, aggregator=record["aggregator"])
                elif record["kind"] == "sweep":
                    sweeps.append(record)
                elif record["kind"] == "skip":
                    skipped.append(record)
                    bar.update(len(aggregator_names))
                if record["kind"] in ("fl", "sweep"):
                    bar.update(1)
    model = memory_model(rows, args)
    results = {"config": config, "fl": rows, "sweep": sweeps, "skipped": skipped, "memory_model": model,
               "wall_s": time.perf_counter() - start}
    path = write_results(args.out, results)
    plot(rows, sweeps, os.path.join(args.out, "scaling.png"))
    for r in rows:
        speed = ("not run" if r["rounds_per_s"] is None else
                 f"{r['rounds_per_s']:.3g} rounds/s ({r['run_cpu_s'] / r['rounds']:.3g} CPU-s per round)")
        print(f"{r['devices']} device(s) {r['aggregator']:>15}: {speed}, "
              f"peak {r['peak_bytes_per_device'] / GB:.3f} GB per device (compile {r['compile_s']:.1f} s)")
    for s in sweeps:
        print(f"{s['devices']} device(s) sweep: {s['seeds_per_s']:.3g} seeds/s ({s['num_seeds']} seeds)")
    if model:
        print(f"memory model: {model['bytes_per_sampled_client'] / 1e6:.1f} MB per sampled client "
              f"({model['update_bytes'] / 1e6:.1f} MB is its f32[d] update), {model['bytes_per_client_data'] / 1e3:.1f}"
              f" kB of data per client; one 80 GB device holds w ~ {model['max_w_on_80GB']:,} at K={args.num_clients:,}")
    print(f"wrote {path}")


def run_worker(n, argv):
    """Runs this script as a worker on ``n`` forced host devices; yields its JSON records as they come."""
    argv = [a for a in argv if a != "--worker"]
    env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} "
                                       f"--xla_force_host_platform_device_count={n}".strip()}
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.scaling", *argv, "--worker", str(n)], env=env,
                            stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line.startswith("RECORD "):
            yield json.loads(line[len("RECORD "):])
    if proc.wait():
        raise RuntimeError(f"scaling worker on {n} device(s) failed with exit code {proc.returncode}")


def worker(args):
    """Measures every aggregator and the sweep on ``args.worker`` devices; prints one ``RECORD {json}`` per run."""
    n = args.worker
    if jax.device_count() < n:
        emit({"kind": "skip", "devices": n, "reason": f"only {jax.device_count()} {jax.default_backend()} devices"})
        return
    K, w, B, R = args.num_clients, args.clients_per_round, args.batch_size, args.rounds
    dataset = synthetic(K * B, 256)
    model = models.get(args.model, 10, (28, 28, 1))
    mesh = sharding.make_mesh(clients=n) if n > 1 else None
    key = jax.random.PRNGKey(0)

    def fl_config(aggregator, clients_per_round):
        hparams = {"num_byzantine": max(1, clients_per_round // 10)} if aggregator == "krum" else {}
        if aggregator in ("median", "clipped_median") and args.order_method != "default":
            hparams = {"method": args.order_method}
        return fl.FLConfig(num_clients=K, num_malicious=0, clients_per_round=clients_per_round, batch_size=B,
                           rounds=R, eval_every=R, aggregator=aggregator, aggregator_hparams=hparams, unroll=R,
                           partition="iid")

    for name in args.aggregators.split(","):
        start, cpu = time.perf_counter(), time.process_time()
        compiled = jax.jit(fl.make_run(fl_config(name, w), dataset, model, mesh=mesh)).lower(key).compile()
        compile_s, compile_cpu_s = time.perf_counter() - start, time.process_time() - cpu
        run_s = run_cpu_s = None
        load = os.getloadavg()[0]
        if not args.skip_run:
            start, cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(compiled(key))
            run_s, run_cpu_s = time.perf_counter() - start, time.process_time() - cpu
        record = {"kind": "fl", "devices": n, "aggregator": name, "model": args.model, "num_clients": K,
                  "clients_per_round": w, "batch_size": B, "rounds": R, "dim": int(model.num_params),
                  "compile_s": compile_s, "run_s": run_s, "rounds_per_s": None if run_s is None else R / run_s,
                  "compile_cpu_s": compile_cpu_s, "run_cpu_s": run_cpu_s, "load_average_1min": load,
                  "aggregator_hparams": dict(fl_config(name, w).aggregator_hparams),
                  **memory(compiled),
                  "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind}
        if n == 1 and name == "mean":  # the memory model: peak bytes at w and w/2, compiled only
            half = jax.jit(fl.make_run(fl_config(name, w // 2), dataset, model)).lower(key).compile()
            record["peak_bytes_half_w"] = memory(half)["peak_bytes_per_device"]
        emit(record)
    sweep_one(args, n)


def sweep_one(args, n):
    """Seeds per second of an attack sweep (digits, MLP, K=100, w=10) with its seeds split over ``n`` devices."""
    dataset = data.load("digits")
    model = models.get("mlp", dataset.num_classes, dataset.input_shape)
    config = fl.FLConfig(num_clients=100, num_malicious=20, clients_per_round=10, batch_size=8,
                         rounds=args.sweep_rounds, eval_every=args.sweep_rounds, aggregator="median")
    sweep = fl.make_attack_sweep(config, dataset, model, [("none", {}), ("ipm", {"eps": 0.5})],
                                 mesh=sharding.make_mesh(seeds=n) if n > 1 else None)
    keys = jax.random.split(jax.random.PRNGKey(0), args.sweep_seeds)
    start = time.perf_counter()
    jax.block_until_ready(sweep(keys, 1))
    compile_s = time.perf_counter() - start
    start, cpu, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    history = jax.block_until_ready(sweep(jax.random.split(jax.random.PRNGKey(1), args.sweep_seeds), 1))
    run_s, run_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    emit({"kind": "sweep", "devices": n, "num_seeds": args.sweep_seeds, "rounds": args.sweep_rounds,
          "compile_s": compile_s, "run_s": run_s, "run_cpu_s": run_cpu_s, "load_average_1min": load,
          "seeds_per_s": args.sweep_seeds / run_s,
          "final_accuracy": np.asarray(history.test_accuracy[:, -1]).tolist()})


def memory(compiled) -> dict:
    """Per-device bytes from XLA's compiled-memory analysis."""
    stats = compiled.memory_analysis()
    parts = {"argument_bytes": stats.argument_size_in_bytes, "output_bytes": stats.output_size_in_bytes,
             "temp_bytes": stats.temp_size_in_bytes, "alias_bytes": stats.alias_size_in_bytes}
    parts["peak_bytes_per_device"] = (parts["argument_bytes"] + parts["output_bytes"] + parts["temp_bytes"]
                                      - parts["alias_bytes"])
    return parts


def memory_model(rows, args) -> dict:
    """Bytes per sampled client (measured: the slope from w/2 to w on one device) and per client of data
    (replicated on every device); the largest w one 80 GB device holds at this K and d."""
    base = next((r for r in rows if r["devices"] == 1 and "peak_bytes_half_w" in r), None)
    if base is None:
        return {}
    w = base["clients_per_round"]
    per_client = (base["peak_bytes_per_device"] - base["peak_bytes_half_w"]) / (w - w // 2)
    # the data are constants of the program, outside XLA's argument bytes: images, labels, index row and size
    data_per_client = args.batch_size * (28 * 28 * 4 + 4) + 4 * 2
    fixed = base["peak_bytes_per_device"] - w * per_client
    return {"bytes_per_sampled_client": per_client, "update_bytes": 4 * base["dim"],
            "bytes_per_client_data": data_per_client, "fixed_bytes": fixed,
            "max_w_on_80GB": int((80 * GB - fixed - base["num_clients"] * data_per_client) // per_client),
            "formula": "peak ~ fixed(d) + K * data_per_client + w * bytes_per_sampled_client (per device: the "
                       "sharded client computation divides by the devices, the gathered f32[w, d] does not)"}


def synthetic(num_train, num_test, seed=0):
    """Random 28x28x1 images with random labels (speed and memory do not depend on the pixels)."""
    rng = np.random.default_rng(seed)
    x = rng.random((num_train + num_test, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, num_train + num_test).astype(np.int32)
    return data.Dataset("synthetic_28x28", x[:num_train], y[:num_train], x[num_train:], y[num_train:], 10)


def emit(record):
    print("RECORD " + json.dumps(record), flush=True)


def plot(rows, sweeps, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name in dict.fromkeys(r["aggregator"] for r in rows):
        mine = [r for r in rows if r["aggregator"] == name]
        devices = [r["devices"] for r in mine]
        axes[0].plot(devices, [np.nan if r["rounds_per_s"] is None else r["rounds_per_s"] for r in mine], "o-",
                     label=name)
        axes[1].plot(devices, [r["peak_bytes_per_device"] / GB for r in mine], "o-", label=name)
    if rows:
        r = rows[0]
        title = f"{r['model']}: K={r['num_clients']:,}, w={r['clients_per_round']:,}, d={r['dim']:,} ({r['backend']})"
        axes[0].set(xlabel="devices", ylabel="rounds / s", title=title)
        axes[1].set(xlabel="devices", ylabel="peak GB per device", title="XLA memory analysis")
        axes[0].legend()
    axes[2].plot([s["devices"] for s in sweeps], [s["seeds_per_s"] for s in sweeps], "o-")
    axes[2].set(xlabel="devices", ylabel="seeds / s", title="attack sweep, seeds over 'seeds'")
    for ax in axes:
        ax.set_xscale("log", base=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
