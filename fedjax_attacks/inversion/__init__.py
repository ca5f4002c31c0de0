"""Gradient inversion: DLG and inverting gradients (vmapped over restarts and targets), the attacker's
gradient estimate in FL, the denoising autoencoder, metrics and DP-style defenses.

The optimizer loop (``make_minimizer``, ``make_multistart``) is generic over what is optimized and is
reused by RGIA for federated RL, which lives in ``fedjax_attacks.rgia`` (importing this package loads neither
gymnax nor scikit-learn).
"""

from fedjax_attacks.inversion.attack import LABEL_MODES, Reconstruction, dlg, inverting_gradients
from fedjax_attacks.inversion.defense import clip_by_norm, privatize, sweep
from fedjax_attacks.inversion.denoiser import ConvAutoencoder, Denoiser, learned_distribution, train_denoiser
from fedjax_attacks.inversion.fl_view import InversionTargets, gradient_estimate, targets_from_snapshots
from fedjax_attacks.inversion.matching import (
    cosine_distance,
    infer_labels,
    l2_distance,
    output_bias_indices,
    soft_label_gradient,
    total_variation,
)
from fedjax_attacks.inversion.metrics import (
    batch_scores,
    label_accuracy,
    match_batch,
    mse,
    optimal_assignment,
    psnr,
    ssim,
)
from fedjax_attacks.inversion.optimize import (
    MultiStartResult,
    make_minimizer,
    make_multistart,
    step_decay_schedule,
)

__all__ = [
    "LABEL_MODES", "Reconstruction", "dlg", "inverting_gradients",
    "clip_by_norm", "privatize", "sweep",
    "ConvAutoencoder", "Denoiser", "learned_distribution", "train_denoiser",
    "InversionTargets", "gradient_estimate", "targets_from_snapshots",
    "cosine_distance", "infer_labels", "l2_distance", "output_bias_indices", "soft_label_gradient",
    "total_variation",
    "batch_scores", "label_accuracy", "match_batch", "mse", "optimal_assignment", "psnr", "ssim",
    "MultiStartResult", "make_minimizer", "make_multistart", "step_decay_schedule",
]
