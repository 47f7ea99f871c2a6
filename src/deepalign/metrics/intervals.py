"""Intervals: the Wilson interval of a rate and the paired bootstrap of a difference or a ratio
between two models measured on the same items."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

Z95 = 1.959963984540054
#: resamples of the paired bootstrap, from a fixed seed: the same rows give the same interval
BOOTSTRAP = 2000
BOOTSTRAP_SEED = 0


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval for ``k`` successes in ``n`` trials (None when n == 0)."""
    if n <= 0:
        return None
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def wilson(k: int, n: int) -> list[float] | None:
    """:func:`wilson_interval` as a list (JSON), None when n == 0."""
    ci = wilson_interval(k, n)
    return list(ci) if ci else None


def proportion(k: int, n: int) -> dict[str, Any]:
    ci = wilson_interval(k, n)
    return {"k": k, "n": n, "rate": (k / n) if n else None, "ci95": list(ci) if ci else None}


def bootstrap_mean(values, *, resamples: int = BOOTSTRAP) -> dict:
    """Mean of ``values`` with its 95% percentile-bootstrap interval (``resamples`` draws of
    the rows, fixed seed: the same values give the same interval)."""
    import numpy as np

    x = np.asarray(list(values), dtype=float)
    if not len(x):
        return {"mean": None, "ci95": None, "n": 0}
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(x.mean()), "ci95": [float(lo), float(hi)], "n": int(len(x))}


def _resample(keys: list[str], strata: dict[str, str]):
    """``BOOTSTRAP`` x len(keys) indices, resampled with replacement within each stratum."""
    import numpy as np

    rng = np.random.default_rng(BOOTSTRAP_SEED)
    groups = defaultdict(list)
    for i, k in enumerate(keys):
        groups[strata.get(k, "")].append(i)
    cols = []
    for g in sorted(groups):
        idx = np.asarray(groups[g])
        cols.append(idx[rng.integers(0, len(idx), size=(BOOTSTRAP, len(idx)))])
    return np.concatenate(cols, axis=1)


def paired_bootstrap(num_a: dict, num_b: dict, strata: dict, den: dict | None = None, *, ratio: bool = False):
    """Point estimate and 95% interval of ``A - B`` (or ``A / B`` with ``ratio``) where
    ``A = sum(num_a) / sum(den)`` over the items both dicts share (``den`` counts per item,
    default 1; ``num_b`` may instead map an item to ``(num, den)``). Items are resampled
    within their stratum (``strata``: item -> dataset, and seed when seeds are pooled)."""
    import numpy as np

    keys = sorted(set(num_a) & set(num_b))
    if not keys:
        return None, None

    def split(d):
        vals = [d[k] for k in keys]
        if vals and isinstance(vals[0], tuple):
            return np.array([v[0] for v in vals], float), np.array([v[1] for v in vals], float)
        return np.array(vals, float), np.array([(den or {}).get(k, 1) for k in keys], float)

    (na, da), (nb, db) = split(num_a), split(num_b)

    def stat(a, b):
        return a / b if ratio else a - b

    with np.errstate(divide="ignore", invalid="ignore"):
        point = stat(na.sum() / da.sum(), nb.sum() / db.sum())
        idx = _resample(keys, strata)
        boot = stat(na[idx].sum(1) / da[idx].sum(1), nb[idx].sum(1) / db[idx].sum(1))
    boot = boot[np.isfinite(boot)]
    if not len(boot):
        return float(point), None
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(point), [float(lo), float(hi)]
