"""Splitting a training set over K clients as a padded, vmappable index table."""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Partition:
    """Which training samples each client holds.

    Attributes:
      indices: int32[K, S], row k lists client k's sample indices; entries at positions >= sizes[k] are padding
        (they repeat a valid index so gathers stay in range, but must be masked out).
      sizes: int32[K], how many samples client k holds (>= 1).
    """

    indices: np.ndarray
    sizes: np.ndarray

    @property
    def num_clients(self) -> int:
        """K."""
        return len(self.sizes)

    def client_samples(self, k: int) -> np.ndarray:
        """The sample indices of client ``k`` (no padding)."""
        return self.indices[k, : self.sizes[k]]


def partition(labels, num_clients: int, scheme: str = "iid", *, seed: int = 0, q: float = 0.5,
              alpha: float = 0.5, num_groups: int | None = None, min_size: int = 1) -> Partition:
    """Assigns every training sample to exactly one of ``num_clients`` clients.

    Schemes:
      * ``"iid"``: a random permutation split into near-equal shards.
      * ``"q_noniid"`` (Fang et al. 2020, used by the seed paper): clients form ``num_groups`` groups (default: the
        number of classes C), client k in group k mod C, so malicious clients 0..M-1 spread evenly over groups.
        A sample of label c goes to group c mod C with probability ``q``, otherwise to one of the other groups
        uniformly, then to a uniformly chosen client of that group. q = 1/C is iid; larger q is more skewed.
      * ``"dirichlet"``: for each class, client proportions ~ Dir(``alpha``); smaller alpha is more skewed.
        Redrawn (up to 100 times) until every client holds at least ``min_size`` samples.

    Returns:
      A ``Partition`` (padded index table and sizes); deterministic given ``seed``.

    Raises:
      ValueError: unknown scheme, bad q/alpha, or more clients than samples.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if num_clients < 1 or num_clients > n:
        raise ValueError(f"num_clients must be in [1, {n}] (the number of samples), got {num_clients}")
    rng = np.random.default_rng(seed)
    if scheme == "iid":
        shards = np.array_split(rng.permutation(n), num_clients)
    elif scheme == "q_noniid":
        shards = _q_noniid(labels, num_clients, q, num_groups, rng)
    elif scheme == "dirichlet":
        shards = _dirichlet(labels, num_clients, alpha, min_size, rng)
    else:
        raise ValueError(f"unknown partition scheme {scheme!r}; known: iid, q_noniid, dirichlet")
    sizes = np.array([len(s) for s in shards], np.int32)
    if sizes.min() < max(min_size, 1):
        raise ValueError(f"partition {scheme!r} left a client with {sizes.min()} samples (need >= {max(min_size, 1)}); "
                         "use fewer clients or a less skewed setting")
    table = np.stack([np.resize(np.asarray(s, np.int32), sizes.max()) for s in shards])
    return Partition(indices=table, sizes=sizes)


def _q_noniid(labels, num_clients, q, num_groups, rng):
    num_classes = int(labels.max()) + 1
    groups = num_groups or num_classes
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    if groups < 2 or groups > num_clients:
        raise ValueError(f"num_groups must be in [2, num_clients={num_clients}], got {groups}")
    home = labels % groups
    other = (home + rng.integers(1, groups, size=len(labels))) % groups
    group = np.where(rng.random(len(labels)) < q, home, other)
    members = [np.arange(g, num_clients, groups) for g in range(groups)]
    client = np.array([members[g][rng.integers(len(members[g]))] for g in group])
    return [np.flatnonzero(client == k) for k in range(num_clients)]


def _dirichlet(labels, num_clients, alpha, min_size, rng):
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    classes = np.unique(labels)
    for _ in range(100):
        shards = [[] for _ in range(num_clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet(np.full(num_clients, alpha))) * len(idx)).astype(int)[:-1]
            for k, part in enumerate(np.split(idx, cuts)):
                shards[k].extend(part.tolist())
        if min(len(s) for s in shards) >= max(min_size, 1):
            return [np.sort(np.array(s, np.int64)) for s in shards]
    raise ValueError(f"dirichlet(alpha={alpha}) could not give each of {num_clients} clients >= {min_size} samples")
