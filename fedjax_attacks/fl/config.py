"""The FL configuration and its validation (all checks happen before anything is traced)."""

import dataclasses
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_attacks import aggregators
from fedjax_attacks.validation import check_count, check_rate

MODES = ("fedsgd", "fedavg")
KNOWLEDGE = ("full", "partial")
ON_NONFINITE = ("skip", "raise", "apply")
PARTITIONS = ("iid", "q_noniid", "dirichlet")


@dataclasses.dataclass(frozen=True)
class FLConfig:
    """One FL experiment (the seed paper's notation in brackets).

    Attributes:
      num_clients: K, clients in the federation.
      num_malicious: M, malicious clients (ids 0..M-1; partitions spread them over non-iid groups).
      clients_per_round: w, clients sampled per round without replacement.
      batch_size: B, samples per local step.
      local_steps: local SGD steps per round (FedAvg); FedSGD sends one gradient and needs 1.
      lr: eta, the learning rate (the server's in FedSGD, the clients' in FedAvg).
      server_lr: FedAvg's server step on the aggregated delta (theta <- theta + server_lr * aggregate).
      rounds: T, communication rounds.
      eval_every: rounds between test evaluations; must divide ``rounds``.
      mode: "fedsgd" (clients send gradients g_i; theta <- theta - lr * agg) or "fedavg" (clients send deltas).
      aggregator, aggregator_hparams: rule name and hyperparameters for ``aggregators.get``.
      attack, attack_hparams: attack name and hyperparameters for ``attacks.get``.
      knowledge: "full" (attackers see the benign updates) or "partial" (only their own).
      partition: "iid", "q_noniid" (degree ``q``) or "dirichlet" (``alpha``); ``partition_seed`` fixes it.
      root_size: samples of server root data (FLTrust's g0 is one update computed on them); clamped to the
        training set's size.
      unroll: unroll factor of the scan over the rounds of one evaluation block (``lax.scan(unroll=...)``).
        On XLA's CPU backend convolutions inside a loop body ran ~4-5x slower than unrolled (measured with the
        paper CNN); unrolling costs compile time, so keep 1 for MLPs and use up to ``eval_every`` for CNNs on CPU.
      on_nonfinite: what the server does with an unusable aggregate (NaN/Inf, or a squared norm that overflows
        such as a 1e38 coordinate; e.g. when a round draws more
        attackers sending NaN rows than its rule tolerates): ``"skip"`` refuses the round (theta and the
        aggregator state stay; ``History.num_skipped`` counts it), ``"raise"`` stops with an error naming the
        round (for debugging), ``"apply"`` applies it anyway (to study breakdown).
    """

    num_clients: int = 100
    num_malicious: int = 20
    clients_per_round: int = 10
    batch_size: int = 8
    local_steps: int = 1
    lr: float = 0.1
    server_lr: float = 1.0
    rounds: int = 1000
    eval_every: int = 50
    mode: str = "fedsgd"
    aggregator: str = "mean"
    aggregator_hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    attack: str = "none"
    attack_hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    knowledge: str = "full"
    partition: str = "iid"
    q: float = 0.5
    alpha: float = 0.5
    partition_seed: int = 0
    root_size: int = 100
    unroll: int = 1
    on_nonfinite: str = "skip"

    def validate(self) -> None:
        """Raises ``ValueError`` naming the first inconsistent field."""
        positive = ("num_clients", "clients_per_round", "batch_size", "local_steps", "rounds", "eval_every", "root_size",
                    "unroll")
        for name in positive:
            check_count(self, name)
        check_count(self, "num_malicious", 0)
        check_count(self, "partition_seed", 0)
        if not 0 <= self.num_malicious <= self.num_clients:
            raise ValueError(f"num_malicious M={self.num_malicious} must be in [0, num_clients K={self.num_clients}]")
        if self.clients_per_round > self.num_clients:
            raise ValueError(f"clients_per_round w={self.clients_per_round} exceeds num_clients K={self.num_clients}")
        if self.rounds % self.eval_every:
            raise ValueError(f"eval_every={self.eval_every} must divide rounds={self.rounds}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "fedsgd" and self.local_steps != 1:
            raise ValueError("mode='fedsgd' sends one gradient: local_steps must be 1 (use mode='fedavg')")
        if self.knowledge not in KNOWLEDGE:
            raise ValueError(f"knowledge must be one of {KNOWLEDGE}, got {self.knowledge!r}")
        check_rate(self, "lr")
        check_rate(self, "server_lr")
        if self.on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"FLConfig.on_nonfinite must be one of {ON_NONFINITE}, got {self.on_nonfinite!r}")
        if self.partition not in PARTITIONS:
            raise ValueError(f"FLConfig.partition: unknown partition {self.partition!r}; known: {PARTITIONS}")
        if not _is_number(self.q) or not 0.0 <= self.q <= 1.0:
            raise ValueError(f"FLConfig.q must be a number in [0, 1], got {self.q!r}")
        if not _is_number(self.alpha) or not self.alpha > 0:
            raise ValueError(f"FLConfig.alpha must be a finite number > 0, got {self.alpha!r}")
        _check_rule_accepts_rows(self)


def _is_number(value) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
            and bool(np.isfinite(value)))


def _check_rule_accepts_rows(config: FLConfig) -> None:
    """The server's rule must take ``w`` rows (Krum needs ``n > 2f + 2``, the trimmed mean ``n > 2b``, ...):
    traced on abstract shapes only (``jax.eval_shape``, nothing runs), so the error comes before the run is
    traced. Unknown names and bad hyperparameters raise here too; a pre-aggregator is left to ``check_final``."""
    if not isinstance(config.aggregator, str):
        raise ValueError(f"FLConfig.aggregator must be a registry name, got {config.aggregator!r}")
    rule = aggregators.get(config.aggregator, **dict(config.aggregator_hparams))
    if rule.pre:
        return
    context = {"key": jax.random.PRNGKey(0), "server_update": jnp.zeros(2, jnp.float32)}
    rows = jax.ShapeDtypeStruct((config.clients_per_round, 2), jnp.float32)
    try:
        jax.eval_shape(lambda u: rule.update(u, rule.init(2), **context)[0], rows)
    except ValueError as e:
        raise ValueError(f"FLConfig.aggregator={config.aggregator!r} cannot aggregate clients_per_round "
                         f"w={config.clients_per_round} rows: {e}") from None
