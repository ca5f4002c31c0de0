"""Speed of the robust aggregators: jitted JAX against NumPy and ByzFL-style PyTorch implementations of the same
rule, measured in the same run (issue 3). n clients in {10, 100}, d coordinates, f = n // 5 Byzantine.
PyTorch runs on ``--torch-device`` (default: CUDA when a GPU is present, else the CPU), so on a GPU machine both
sides run on the GPU; results.json records both devices.

    python -m benchmarks.aggregators_speed [--quick] [--dims 10000 100000 1000000] [--clients 10 100]
                                           [--torch-device cpu|cuda]
"""

import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from tqdm import tqdm

from benchmarks import common
from fedjax_attacks import aggregators as agg

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

try:
    import torch
except ImportError:  # the bench extra is optional
    torch = None

GM_ITERS, GM_NU, CC_TAU = 3, 0.1, 100.0


def torch_device(name=None):
    """The PyTorch device of the baseline: ``name`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``), or by default
    ``"cuda"`` when PyTorch sees a GPU and ``"cpu"`` otherwise; ``None`` when PyTorch is not installed.

    Raises:
      ValueError: an unknown device name, or a CUDA device asked for where PyTorch has no CUDA.
    """
    if torch is None:
        return None
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--torch-device {name!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--torch-device {name!r}: this PyTorch build sees no CUDA GPU (torch "
                         f"{torch.__version__}); use --torch-device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--torch-device {name!r}: only cpu and cuda are supported")
    return device


def torch_synchronize(device):
    """Waits for ``device``'s queued kernels (CUDA runs asynchronously; timings must include the work)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def devices_record(device) -> dict:
    """Both sides' devices for results.json: JAX's devices and the PyTorch baseline's (with the GPU's name)."""
    record = {"jax": [f"{d.platform}:{d.device_kind}" for d in jax.devices()], "torch": None}
    if device is not None:
        record["torch"] = str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    return record
TORCH_MAX_GATHER_BYTES = 4e9  # ByzFL's NNM gathers an (n, n - f, d) tensor


def _bulyan_f(n, f):
    return min(f, (n - 3) // 4)


# ------------------------------------------------------------------------------------------ JAX (this library)
def jax_rules(n, f):
    """The library's rules with the benchmark's hyperparameters."""
    return {
        "mean": agg.mean(),
        "median": agg.median(),
        "trimmed_mean": agg.trimmed_mean(f),
        "clipped_median": agg.clipped_median(2.0),
        "krum": agg.krum(f),
        "multi_krum": agg.multi_krum(f),
        "geometric_median": agg.geometric_median(GM_ITERS, GM_NU),
        "centered_clipping": agg.centered_clipping(CC_TAU),
        "nnm": agg.nnm(f),
        "bulyan": agg.bulyan(_bulyan_f(n, f)),
    }


# ------------------------------------------------------------------------------------------ NumPy references
def _np_sqdist(x):
    sq = np.einsum("ij,ij->i", x, x)
    return np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)


def _np_krum_scores(x, f):
    d = _np_sqdist(x)
    return np.sort(d, axis=1)[:, 1:len(x) - f - 1].sum(1)


def _np_bulyan(x, f):
    n = len(x)
    theta, beta = n - 2 * f, n - 4 * f
    d, rest, chosen = _np_sqdist(x), list(range(n)), []
    for _ in range(theta):
        sub = d[np.ix_(rest, rest)]
        k = max(len(rest) - f - 2, 2)
        scores = np.sort(sub, axis=1)[:, 1:k + 1].sum(1)
        chosen.append(rest.pop(int(np.argmin(scores))))
    sel = x[chosen]
    med = np.median(sel, axis=0)
    idx = np.argpartition(np.abs(sel - med), beta - 1, axis=0)[:beta]
    return np.take_along_axis(sel, idx, axis=0).mean(0)


def numpy_rules(n, f):
    """Plain NumPy implementations (``np.median``, ``np.sort``, Gram-matrix distances)."""

    def clip(x):
        return x * np.minimum(1, 2.0 / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-30))

    def gm(x):
        z = np.zeros(x.shape[1], x.dtype)
        for _ in range(GM_ITERS):
            w = 1 / np.maximum(GM_NU, np.linalg.norm(x - z, axis=1))
            z = w @ x / w.sum()
        return z

    def cc(x):
        diff = x
        scale = np.minimum(1, CC_TAU / np.maximum(np.linalg.norm(diff, axis=1), 1e-30))
        return (scale[:, None] * diff).mean(0)

    def nnm(x):
        idx = np.argsort(_np_sqdist(x), axis=1)[:, :n - f]
        mix = np.zeros((n, n), x.dtype)
        np.put_along_axis(mix, idx, 1.0 / (n - f), axis=1)
        return mix @ x

    return {
        "mean": lambda x: x.mean(0),
        "median": lambda x: np.median(x, axis=0),
        "trimmed_mean": lambda x: np.sort(x, axis=0)[f:n - f].mean(0),
        "clipped_median": lambda x: np.median(clip(x), axis=0),
        "krum": lambda x: x[np.argmin(_np_krum_scores(x, f))],
        "multi_krum": lambda x: x[np.argsort(_np_krum_scores(x, f))[:n - f]].mean(0),
        "geometric_median": gm,
        "centered_clipping": cc,
        "nnm": nnm,
        "bulyan": lambda x: _np_bulyan(x, _bulyan_f(n, f)),
    }


# ------------------------------------------------------------------------------------------ PyTorch (ByzFL style)
def torch_rules(n, f):
    """PyTorch implementations written the way ByzFL writes them (``torch.quantile``, ``torch.sort``,
    ``torch.cdist`` + ``topk``, gathered neighbours for NNM)."""

    def krum_scores(x):
        d = torch.cdist(x, x) ** 2
        return torch.topk(d, k=n - f - 1, dim=1, largest=False).values.sum(1)

    def clip(x):
        norms = torch.linalg.norm(x, dim=1, keepdim=True)
        return x * torch.clamp(2.0 / norms, max=1.0)

    def gm(x):
        z = torch.zeros_like(x[0])
        for _ in range(GM_ITERS):
            w = 1 / torch.clamp(torch.linalg.norm(x - z, dim=1), min=GM_NU)
            z = (w[:, None] * x).sum(0) / w.sum()
        return z

    def cc(x):
        v = torch.zeros_like(x[0])
        diff = x - v
        scale = torch.clamp(CC_TAU / torch.linalg.norm(diff, dim=1), max=1.0)
        return v + (scale[:, None] * diff).mean(0)

    def nnm(x):
        idx = torch.topk(torch.cdist(x, x) ** 2, k=n - f, dim=1, largest=False).indices
        return x[idx].mean(1)

    def bulyan(x):
        fb = _bulyan_f(n, f)
        theta, beta = n - 2 * fb, n - 4 * fb
        d = torch.cdist(x, x) ** 2
        rest, chosen = list(range(n)), []
        for _ in range(theta):
            sub = d[rest][:, rest]
            k = max(len(rest) - fb - 2, 2)
            scores = torch.topk(sub, k=k + 1, dim=1, largest=False).values.sum(1)
            chosen.append(rest.pop(int(torch.argmin(scores))))
        sel = x[chosen]
        med = torch.quantile(sel, 0.5, dim=0)
        idx = torch.topk(torch.abs(sel - med), beta, dim=0, largest=False).indices
        return torch.gather(sel, 0, idx).mean(0)

    return {
        "mean": lambda x: x.mean(0),
        "median": lambda x: torch.quantile(x, 0.5, dim=0),
        "trimmed_mean": lambda x: torch.sort(x, dim=0).values[f:n - f].mean(0),
        "clipped_median": lambda x: torch.quantile(clip(x), 0.5, dim=0),
        "krum": lambda x: x[torch.argmin(krum_scores(x))],
        "multi_krum": lambda x: x[torch.argsort(krum_scores(x))[:n - f]].mean(0),
        "geometric_median": gm,
        "centered_clipping": cc,
        "nnm": nnm,
        "bulyan": bulyan,
    }


# ------------------------------------------------------------------------------------------ driver
def run(clients, dims, repeats, device=None):
    """Times every rule for every (n, d); returns the results dict (milliseconds, ratios, max abs differences).
    PyTorch runs on ``device`` (``torch_device``; None: no PyTorch)."""
    rows = []
    combos = [(n, d) for n in clients for d in dims]
    bar = tqdm(total=len(combos) * len(jax_rules(10, 2)), desc="aggregators")
    for n, d in combos:
        f = n // 5
        x_np = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
        x_jax = jnp.asarray(x_np)
        x_torch = None if device is None else torch.from_numpy(x_np).to(device)
        ours, nps, tos = jax_rules(n, f), numpy_rules(n, f), (torch_rules(n, f) if device is not None else {})
        for name, rule in ours.items():
            fn = jax.jit(rule.__call__)
            start = time.perf_counter()
            result = jax.block_until_ready(fn(x_jax))
            compile_s = time.perf_counter() - start
            row = {"n": n, "d": d, "f": f, "rule": name, "compile_s": compile_s,
                   "jax_ms": 1e3 * common.median_time(lambda: jax.block_until_ready(fn(x_jax)), repeats)}
            ref = nps[name](x_np)
            row["numpy_ms"] = 1e3 * common.median_time(lambda: nps[name](x_np), repeats)
            row["max_abs_diff_vs_numpy"] = float(np.max(np.abs(np.asarray(result) - ref)))
            if name in tos and not (name == "nnm" and n * (n - f) * d * 4 > TORCH_MAX_GATHER_BYTES):
                def call_torch():
                    with torch.no_grad():
                        tos[name](x_torch)
                    torch_synchronize(device)

                row["torch_ms"] = 1e3 * common.median_time(call_torch, repeats)
                row["speedup_vs_torch"] = row["torch_ms"] / row["jax_ms"]
            row["speedup_vs_numpy"] = row["numpy_ms"] / row["jax_ms"]
            rows.append(row)
            bar.update()
    bar.close()
    return rows


def plot(rows, path):
    """One panel per (n, d): per rule, log-scale bars of JAX / NumPy / PyTorch milliseconds."""
    combos = sorted({(r["n"], r["d"]) for r in rows})
    fig, axes = plt.subplots(1, len(combos), figsize=(5 * len(combos), 4.5), squeeze=False)
    for ax, (n, d) in zip(axes[0], combos):
        sub = [r for r in rows if (r["n"], r["d"]) == (n, d)]
        pos = np.arange(len(sub))
        for k, (key, label) in enumerate([("jax_ms", "JAX (ours)"), ("numpy_ms", "NumPy"), ("torch_ms", "PyTorch")]):
            ax.bar(pos + (k - 1) * 0.27, [r.get(key, np.nan) for r in sub], 0.27, label=label)
        ax.set_xticks(pos, [r["rule"] for r in sub], rotation=60, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("ms per call (median)")
        ax.set_title(f"n={n}, d={d:.0e}, f={n // 5}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    p = common.parser("aggregators_speed", __doc__)
    p.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    p.add_argument("--dims", type=int, nargs="+", default=None, help="default 1e4 1e5 (quick: 1e4)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (default 5, quick 3)")
    p.add_argument("--torch-device", default=None,
                   help="PyTorch baseline's device: cpu or cuda (default: cuda when a GPU is present, else cpu)")
    args = p.parse_args(argv)
    device = torch_device(args.torch_device)
    if device is None:
        print("PyTorch not installed (pip install torch): only JAX and NumPy are measured")
    dims = args.dims or ([10_000] if args.quick else [10_000, 100_000])
    repeats = args.repeats or (3 if args.quick else 5)
    start = time.perf_counter()
    rows = run(args.clients, dims, repeats, device)
    wall = time.perf_counter() - start
    os.makedirs(args.out, exist_ok=True)
    plot(rows, os.path.join(args.out, "aggregators_speed.png"))
    print(f"{'n':>4} {'d':>8} {'rule':>18} {'jax ms':>9} {'numpy ms':>9} {'torch ms':>9} {'x torch':>8} {'x numpy':>8}")
    for r in rows:
        print(f"{r['n']:>4} {r['d']:>8} {r['rule']:>18} {r['jax_ms']:>9.3f} {r['numpy_ms']:>9.3f} "
              f"{r.get('torch_ms', float('nan')):>9.3f} {r.get('speedup_vs_torch', float('nan')):>8.2f} "
              f"{r['speedup_vs_numpy']:>8.2f}")
    path = common.write_results(args.out, {
        "config": {"clients": args.clients, "dims": dims, "repeats": repeats, "quick": args.quick,
                   "f": "n // 5", "geometric_median_iters": GM_ITERS, "smoothing": GM_NU, "cc_tau": CC_TAU,
                   "torch_available": torch is not None, "torch_device": None if device is None else str(device)},
        "devices": devices_record(device),
        "figures": rows,
        "wall_time_s": wall,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
