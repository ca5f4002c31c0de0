"""RGIA: regularized gradient inversion in federated RL (seed paper 001, He 2025, arXiv 2512.00303).

An FRL client, the victim, shares ``g_bar = grad_theta L_TD(theta; {(s_i, a_i, r_i, s'_i)}_{i <= B})``, the gradient
of its TD loss (double DQN or the TD3 critic). The attacker optimizes fake tuples ``x~ = (s~, a~, r~, s~', d~)``:

* GIA: ``min_x~ D(g(x~), g_bar)`` (``D``: cosine, ``"l2"`` or ``"relative_l2"``), whose pseudo-solutions only fit
  the scalar TD target ``y = r + gamma (1 - d) Q'(s')``;
* RGIA (the paper's eq. 7): ``D + alpha R_s + beta R_r + gamma R_f`` with the state prior ``R_s = -log mu_s(s) / D``
  (a Gaussian or a Gaussian mixture), the reward hinge ``R_r`` on ``[r_min, r_max]`` and the transition-model
  consistency ``R_f = ||f(s, a) - s'||^2``, all fitted on the attacker's prior data (a small share of the
  victim's replay buffer);
* the metrics of sec. 5: ``MSE``, ``RA`` (reconstruction accuracy, per field), ``GME``, ``TE`` and, across
  restarts, ``ED``, ``CD`` and ``SS``.

Modules: ``attack`` (``Victim``, ``RGIAConfig``, ``make_rgia(victim, config) -> attack(key, params, g_bar, prior,
weights=None, loss_key=None) -> RGIAResult``), ``envs`` (``make_env``: environments with flat observations and
their real step ``f_true``), ``priors`` (``fit_prior -> Prior``, ``prior_split``), ``metrics``, ``victims``
(``train_victim``, ``train_victims`` at several training stages, ``make_noisy_dqn_train`` under DP noise) and
``experiment`` (the benchmark's victims, tables, sweeps and claims; ``benchmarks/rgia.py`` runs it).

Importing this package loads gymnax and scikit-learn; ``fedjax_attacks.inversion`` (image gradient inversion,
whose optimizer loop RGIA reuses) loads neither.
"""

from fedjax_attacks.rgia import attack, envs, experiment, metrics, priors, victims
from fedjax_attacks.rgia.attack import (
    DISTANCES,
    REGULARIZERS,
    RGIA_WEIGHTS,
    VICTIM_KINDS,
    RGIAConfig,
    RGIAResult,
    Victim,
    make_rgia,
)
from fedjax_attacks.rgia.envs import ENV_NAMES, RGIAEnv, make_env
from fedjax_attacks.rgia.priors import Prior, StatePrior, fit_prior, fit_state_prior, prior_split
from fedjax_attacks.rgia.victims import (
    VictimRun,
    VictimStages,
    make_noisy_dqn_train,
    stage_iterations,
    train_victim,
    train_victims,
    victim_for,
)

__all__ = [
    "attack", "envs", "experiment", "metrics", "priors", "victims",
    "DISTANCES", "REGULARIZERS", "RGIA_WEIGHTS", "VICTIM_KINDS", "RGIAConfig", "RGIAResult", "Victim", "make_rgia",
    "ENV_NAMES", "RGIAEnv", "make_env",
    "Prior", "StatePrior", "fit_prior", "fit_state_prior", "prior_split",
    "VictimRun", "VictimStages", "make_noisy_dqn_train", "stage_iterations", "train_victim", "train_victims",
    "victim_for",
]
