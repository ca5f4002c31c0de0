"""Gradient inversion on digits: DLG and inverting gradients against batch size, the denoiser, DP noise, and
the speed of vmapped restarts against sequential ones.

For each model (the small CNN and the MLP) and method, T target batches of size B (from the test split) are
attacked at once (vmapped over targets, restarts vmapped inside) from their shared mean cross-entropy
gradient at freshly initialized parameters (early FL rounds). Reconstructions are matched to the true
images by optimal assignment and scored (PSNR, SSIM, label accuracy), raw and after a denoising
autoencoder trained on the attackers' 200 clean images + N(0, 0.3^2) noise (seed paper 000, sec. 4.2).
Then the batch-1 gradient is perturbed by Gaussian noise of growing variance (DP defense), and 64
restarts are timed vmapped in one jitted call against 64 sequential calls.

    python -m benchmarks.inversion [--quick] [--out DIR] [--steps 1000] [--restarts 2] [--targets 4]
"""

import os
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from tqdm import tqdm

from benchmarks import common
from fedjax_attacks import data, models
from fedjax_attacks import inversion as inv

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METHODS = {"dlg": inv.dlg, "ig": inv.inverting_gradients}
NUM_ATTACKER_IMAGES = 200


def _floats(s):
    return [float(v) for v in s.split(",")]


def _ints(s):
    return [int(v) for v in s.split(",")]


def parse_args(argv=None):
    p = common.parser("inversion", __doc__.split("\n")[0])
    p.add_argument("--models", default="cnn,mlp", help="comma-separated model names (default: %(default)s)")
    p.add_argument("--methods", default="dlg,ig", help="comma-separated: dlg, ig (default: %(default)s)")
    p.add_argument("--batch-sizes", type=_ints, default=None, help="default 1,2,4,8,16,32 (quick: 1,4)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 1000; quick 100)")
    p.add_argument("--restarts", type=int, default=2, help="random restarts per target (default 2)")
    p.add_argument("--targets", type=int, default=None, help="target batches per setting (default 4; quick 2)")
    p.add_argument("--labels", default="joint", choices=inv.LABEL_MODES, help="label handling (default joint)")
    p.add_argument("--noise-variances", type=_floats, default=[0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
    p.add_argument("--speed-restarts", type=int, default=None, help="restarts in the speed test (default 64; quick 8)")
    p.add_argument("--speed-steps", type=int, default=None, help="steps in the speed test (default 200; quick 50)")
    p.add_argument("--denoiser-steps", type=int, default=None, help="denoiser training steps (default 1000; quick 200)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    quick = args.quick
    args.batch_sizes = args.batch_sizes or ([1, 4] if quick else [1, 2, 4, 8, 16, 32])
    args.steps = args.steps or (100 if quick else 1000)
    args.targets = args.targets or (2 if quick else 4)
    args.speed_restarts = args.speed_restarts or (8 if quick else 64)
    args.speed_steps = args.speed_steps or (50 if quick else 200)
    args.denoiser_steps = args.denoiser_steps or (200 if quick else 1000)
    args.models = args.models.split(",")
    args.methods = args.methods.split(",")
    for m in args.methods:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; known: {', '.join(METHODS)}")
    return args


def _targets(model, params, ds, num_targets, batch_size):
    """T disjoint test batches and their shared gradients g_bar: f32[T, d]."""
    n = num_targets * batch_size
    if n > ds.x_test.shape[0]:
        raise ValueError(f"{num_targets} targets of {batch_size} images exceed the test split")
    x = ds.x_test[:n].reshape(num_targets, batch_size, *ds.x_test.shape[1:])
    y = ds.y_test[:n].reshape(num_targets, batch_size)
    grads = jax.vmap(jax.grad(model.loss), in_axes=(None, 0, 0))(params, x, y)
    return x, y, grads


@jax.jit
def _score(rec_x, rec_y, x, y, denoiser):
    """Mean scores over targets, raw and denoised (``denoised_*``); also returns the denoised images.

    Reconstructions are clipped to the data range [0, 1] first (DLG does not box its pixels)."""
    rec_x = jnp.clip(rec_x, 0.0, 1.0)
    den_x = denoiser(rec_x.reshape(-1, *rec_x.shape[2:])).reshape(rec_x.shape)
    raw = jax.vmap(inv.batch_scores)(rec_x, rec_y, x, y)
    den = jax.vmap(inv.batch_scores)(den_x, rec_y, x, y)
    out = {k: jnp.mean(v) for k, v in raw.items()}
    out.update({f"denoised_{k}": jnp.mean(v) for k, v in den.items() if k != "label_accuracy"})
    return out, den_x


def _scores_to_floats(scores):
    return {k: float(v) for k, v in scores.items()}


def run_sweeps(args, ds, denoiser):
    key = jax.random.PRNGKey(args.seed)
    rows, grids, noise_rows = [], {}, []
    jobs = [(m, meth, b) for m in args.models for meth in args.methods for b in args.batch_sizes]
    for model_name, method, b in tqdm(jobs, desc="inversion sweep"):
        model = models.get(model_name, ds.num_classes, ds.x_train.shape[1:])
        params = model.init(jax.random.PRNGKey(args.seed + 1))
        x, y, g_bar = _targets(model, params, ds, args.targets, b)
        attack = METHODS[method](model, batch_size=b, num_steps=args.steps, num_restarts=args.restarts, labels=args.labels)
        attack_many = jax.jit(jax.vmap(attack, in_axes=(0, None, 0)))
        key, k_att, k_noise = jax.random.split(key, 3)
        start = time.perf_counter()
        rec = jax.block_until_ready(attack_many(jax.random.split(k_att, args.targets), params, g_bar))
        wall = time.perf_counter() - start
        scores, den_x = _score(rec.x, rec.labels, x, y, denoiser)
        scores = _scores_to_floats(scores)
        rows.append({"model": model_name, "method": method, "batch_size": b, "wall_s": wall, **scores})
        tqdm.write(f"{model_name:4s} {method:3s} B={b:2d}: PSNR {scores['psnr']:5.2f} dB "
                   f"(denoised {scores['denoised_psnr']:5.2f}), label acc {scores['label_accuracy']:.2f}, {wall:.1f}s")
        if b == 1:
            grids[f"{model_name}/{method}"] = (np.asarray(x[:, 0]), np.asarray(rec.x[:, 0]), np.asarray(den_x[:, 0]))
            noise_rows += _noise_sweep(args, model_name, method, attack_many, params, x, y, g_bar, k_noise, denoiser)
    return rows, grids, noise_rows


def _noise_sweep(args, model_name, method, attack_many, params, x, y, g_bar, key, denoiser):
    """DP defense at batch 1: attack ``g_bar + N(0, sigma^2 I)`` for each variance sigma^2.

    The noisy gradients of all variances come from one vmapped ``inv.sweep``; the attack is then called once
    per variance with the T targets, reusing the compiled ``attack_many`` (a new batch shape would recompile).
    """
    v = jnp.asarray(args.noise_variances)
    k_noise, k_att = jax.random.split(key)
    noisy = jax.vmap(lambda k, g: inv.sweep(k, g, v, jnp.array([jnp.inf]))[:, 0])(
        jax.random.split(k_noise, g_bar.shape[0]), g_bar)  # [T, V, d]
    grad_rms = float(jnp.sqrt(jnp.mean(jnp.square(g_bar))))
    out = []
    for i, (var, k) in enumerate(zip(args.noise_variances, jax.random.split(k_att, v.shape[0]))):
        rec = attack_many(jax.random.split(k, g_bar.shape[0]), params, noisy[:, i])
        scores, _ = _score(rec.x, rec.labels, x, y, denoiser)
        out.append({"model": model_name, "method": method, "variance": var,
                    "noise_to_grad_rms": float(np.sqrt(var)) / grad_rms, **_scores_to_floats(scores)})
    return out


def speed_test(args, ds, model_name):
    """``speed_restarts`` restarts vmapped in one call against the same number of sequential calls (IG, B=1)."""
    model = models.get(model_name, ds.num_classes, ds.x_train.shape[1:])
    params = model.init(jax.random.PRNGKey(args.seed + 1))
    _, _, g_bar = _targets(model, params, ds, 1, 1)
    r, s = args.speed_restarts, args.speed_steps
    vmapped = inv.inverting_gradients(model, batch_size=1, num_steps=s, num_restarts=r)
    single = inv.inverting_gradients(model, batch_size=1, num_steps=s, num_restarts=1)
    keys = jax.random.split(jax.random.PRNGKey(args.seed + 2), r)
    repeats = 1 if args.quick else 3
    t_vmap = common.median_time(lambda: jax.block_until_ready(vmapped(keys[0], params, g_bar[0])), repeats=repeats)

    def sequential():
        for k in tqdm(keys, desc="sequential restarts", leave=False):
            jax.block_until_ready(single(k, params, g_bar[0]))

    t_seq = common.median_time(sequential, repeats=repeats)
    return {"model": model_name, "method": "ig", "restarts": r, "steps": s, "vmapped_s": t_vmap, "sequential_s": t_seq,
            "speedup": t_seq / t_vmap}


def plot(out_dir, rows, grids, noise_rows):
    """inversion_metrics.png (PSNR, label accuracy vs batch size; PSNR vs DP noise) and inversion_grid.png."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for (model_name, method) in sorted({(r["model"], r["method"]) for r in rows}):
        sel = [r for r in rows if r["model"] == model_name and r["method"] == method]
        bs = [r["batch_size"] for r in sel]
        line, = axes[0].plot(bs, [r["psnr"] for r in sel], "o-", label=f"{model_name} {method}")
        axes[0].plot(bs, [r["denoised_psnr"] for r in sel], "s--", color=line.get_color(), label=f"{model_name} {method} + denoiser")
        axes[1].plot(bs, [r["label_accuracy"] for r in sel], "o-", label=f"{model_name} {method}")
        nsel = [r for r in noise_rows if r["model"] == model_name and r["method"] == method]
        var = [max(r["variance"], 1e-7) for r in nsel]
        axes[2].plot(var, [r["psnr"] for r in nsel], "o-", color=line.get_color(), label=f"{model_name} {method}")
        axes[2].plot(var, [r["denoised_psnr"] for r in nsel], "s--", color=line.get_color())
    for ax, ylabel, xlabel in zip(axes, ["PSNR (dB)", "label accuracy", "PSNR (dB), batch 1"],
                                  ["batch size", "batch size", "DP noise variance (1e-7 = none)"]):
        ax.set_xscale("log", base=2 if xlabel == "batch size" else 10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "inversion_metrics.png"), dpi=120)
    plt.close(fig)

    names = sorted(grids)
    t = grids[names[0]][0].shape[0]
    fig, axes = plt.subplots(3 * len(names), t, figsize=(1.3 * t, 1.3 * 3 * len(names)), squeeze=False)
    for n, name in enumerate(names):
        for row, (label, imgs) in enumerate(zip(["true", "reconstructed", "denoised"], grids[name])):
            for j in range(t):
                ax = axes[3 * n + row, j]
                ax.imshow(imgs[j, ..., 0], cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(f"{name}\n{label}", fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "inversion_grid.png"), dpi=120)
    plt.close(fig)


def main(argv=None):
    args = parse_args(argv)
    ds = data.load("digits")
    t0 = time.perf_counter()
    attackers_x = ds.x_train[-NUM_ATTACKER_IMAGES:]
    denoiser = inv.train_denoiser(jax.random.PRNGKey(args.seed + 3), attackers_x, num_steps=args.denoiser_steps)
    den_wall = time.perf_counter() - t0
    print(f"denoiser trained in {den_wall:.1f}s")
    rows, grids, noise_rows = run_sweeps(args, ds, denoiser)
    speed = [speed_test(args, ds, m) for m in args.models]
    for sp in speed:
        print(f"speed ({sp['model']}, IG, {sp['steps']} steps): {sp['restarts']} restarts vmapped {sp['vmapped_s']:.2f}s, "
              f"sequential {sp['sequential_s']:.2f}s, speedup x{sp['speedup']:.1f}")
    for r in noise_rows:
        print(f"noise {r['model']:4s} {r['method']:3s} var={r['variance']:.0e} (std/grad rms {r['noise_to_grad_rms']:.2g}): "
              f"PSNR {r['psnr']:5.2f} dB, denoised {r['denoised_psnr']:5.2f} dB, label acc {r['label_accuracy']:.2f}")
    config = {k: v for k, v in vars(args).items() if k != "out"}
    config.update(dataset="digits", attackers_images=NUM_ATTACKER_IMAGES, denoiser_noise_std=0.3,
                  params="fresh init (early FL rounds)")
    path = common.write_results(args.out, {
        "config": config,
        "figures": {"batch_sweep": rows, "noise_sweep": noise_rows, "speed": speed},
        "wall_times": {"denoiser_training_s": den_wall, "total_s": time.perf_counter() - t0},
    })
    plot(args.out, rows, grids, noise_rows)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
