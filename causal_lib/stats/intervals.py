"""Confidence intervals for the book's numbers: Clopper-Pearson intervals of rates (`rate`,
`clopper_pearson`), distribution-free intervals of quantiles (`quantile_ci`), percentile bootstrap
intervals of a statistic and of a paired difference (`bootstrap_ci`, `paired_bootstrap_ci`), and
`single_blas_thread` for resampling loops."""
from __future__ import annotations

import functools
import inspect
import math
import os
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats as sps

_controller = None


def single_blas_thread(fn):
    """Decorator: run fn with BLAS limited to CAUSAL_PI_BLAS_THREADS threads (default 1)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        global _controller
        limit = int(os.environ.get("CAUSAL_PI_BLAS_THREADS", "1"))
        if limit <= 0:
            return fn(*args, **kwargs)
        if _controller is None:  # inspecting the loaded libraries costs ~0.4 ms: do it once
            from threadpoolctl import ThreadpoolController
            _controller = ThreadpoolController()
        with _controller.limit(limits=limit, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided 1 - alpha interval for a binomial rate k / n.

    Uses scipy.stats.binomtest(k, n).proportion_ci(method="exact"). n == 0 carries no
    information and returns (0.0, 1.0).
    """
    k, n = int(k), int(n)
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=1.0 - alpha, method="exact")
    return float(ci.low), float(ci.high)


@dataclass
class Rate:
    """A rate k / n with its Clopper-Pearson interval [lo, hi] (95% unless alpha says otherwise)."""

    k: int
    n: int
    rate: float
    lo: float
    hi: float
    alpha: float = 0.05

    def __str__(self) -> str:
        if self.n == 0:
            return f"n/a [{100 * self.lo:.1f}, {100 * self.hi:.1f}] (n=0)"
        return f"{100 * self.rate:.1f}% [{100 * self.lo:.1f}, {100 * self.hi:.1f}]"

    def to_dict(self) -> dict:
        return asdict(self)


def rate(k: int, n: int, alpha: float = 0.05) -> Rate:
    """Rate(k, n, k/n, Clopper-Pearson lo, hi); rate is NaN when n == 0."""
    lo, hi = clopper_pearson(k, n, alpha)
    return Rate(int(k), int(n), (k / n) if n > 0 else float("nan"), lo, hi, alpha)


def wilson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval for k / n (scipy's, without continuity correction; (0, 1) when n == 0)."""
    if n <= 0:
        return 0.0, 1.0
    ci = sps.binomtest(int(k), int(n)).proportion_ci(confidence_level=1.0 - alpha, method="wilson")
    return float(ci.low), float(ci.high)


def paired_difference_ci(both: int, only_a: int, only_b: int, neither: int, alpha: float = 0.05) -> tuple[float, float, float]:
    """(difference, lo, hi): the difference p_a - p_b of two rates measured on the same n items, where `both`
    items have the event under A and B, `only_a` under A alone, `only_b` under B alone, `neither` under neither;
    Newcombe's (1998) hybrid score interval for paired proportions (his method 10: Wilson intervals of each
    margin combined with the pairs' correlation). Chosen over Wald because the rates here are often near 0,
    where Wald's interval collapses to a point."""
    n = both + only_a + only_b + neither
    if n <= 0:
        return float("nan"), -1.0, 1.0
    pa, pb = (both + only_a) / n, (both + only_b) / n
    la, ua = wilson(both + only_a, n, alpha)
    lb, ub = wilson(both + only_b, n, alpha)
    denom = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    phi = (both * neither - only_a * only_b) / math.sqrt(denom) if denom > 0 else 0.0
    d = pa - pb
    dl = math.sqrt(max(0.0, (pa - la) ** 2 - 2 * phi * (pa - la) * (ub - pb) + (ub - pb) ** 2))
    du = math.sqrt(max(0.0, (ua - pa) ** 2 - 2 * phi * (ua - pa) * (pb - lb) + (pb - lb) ** 2))
    return d, max(-1.0, d - dl), min(1.0, d + du)


def quantile_ci(values, q: float, alpha: float = 0.05,
                support: tuple[float, float] = (-math.inf, math.inf)) -> tuple[float, float, float]:
    """(estimate, lo, hi): the q-quantile of values (np.quantile) with the distribution-free 1 - alpha interval
    of order statistics from scipy.stats.quantile_test (binomial counts; no bootstrap, which is unreliable in
    the tails). Where the sample is too small to bound the quantile on a side (scipy gives NaN, e.g. the 99th
    percentile from fewer than ~300 values), that side is the variable's own limit from `support` (e.g. a TV
    distance lies in [0, 1]), which is true whatever the data. n == 0 gives (nan, support...)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float(support[0]), float(support[1])
    est = float(np.quantile(x, q))
    ci = sps.quantile_test(x, q=est, p=q).confidence_interval(confidence_level=1.0 - alpha)
    lo = float(support[0]) if np.isnan(ci.low) else float(ci.low)
    hi = float(support[1]) if np.isnan(ci.high) else float(ci.high)
    return est, lo, hi


@dataclass
class BootstrapCI:
    """Percentile bootstrap interval: estimate = stat(values), [lo, hi] = the alpha/2 and
    1 - alpha/2 quantiles of stat over n_boot resamples of the items (rows) with replacement."""

    estimate: float
    lo: float
    hi: float
    n: int
    n_boot: int
    alpha: float = 0.05

    def __str__(self) -> str:
        return f"{self.estimate:.4g} [{self.lo:.4g}, {self.hi:.4g}]"

    def to_dict(self) -> dict:
        return asdict(self)


def _takes_axis(stat: Callable) -> bool:
    if stat in (np.mean, np.median, np.sum, np.std, np.var, np.nanmean, np.nanmedian):
        return True
    try:
        return "axis" in inspect.signature(stat).parameters
    except (TypeError, ValueError):
        return False


def _boot_stats(arrays: Sequence[np.ndarray], stat: Callable, n_boot: int, rng) -> np.ndarray:
    """stat over n_boot resamples of the rows; the same row indices for every array (paired)."""
    n = len(arrays[0])
    idx = rng.integers(0, n, size=(n_boot, n))
    if all(a.ndim == 1 for a in arrays) and _takes_axis(stat):
        # Vectorised: one (n_boot, n) gather, stat along the resampled axis.
        return np.stack([np.asarray(stat(a[idx], axis=1), dtype=float) for a in arrays])
    return np.stack([np.array([float(stat(a[i])) for i in idx]) for a in arrays])


@single_blas_thread
def bootstrap_ci(values, stat: Callable = np.mean, n_boot: int = 2000, alpha: float = 0.05,
                 seed: int = 0) -> BootstrapCI:
    """Percentile bootstrap CI of stat(values), resampling items (rows of values) with replacement.

    values: per-item array, shape (n,) or (n, ...); stat maps such an array to a scalar (if it takes
    `axis`, 1-D inputs are resampled in one vectorised call).
    """
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n == 0:
        return BootstrapCI(float("nan"), float("nan"), float("nan"), 0, n_boot, alpha)
    est = float(stat(values))
    boots = _boot_stats([values], stat, n_boot, np.random.default_rng(seed))[0]
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return BootstrapCI(est, float(lo), float(hi), n, n_boot, alpha)


@single_blas_thread
def paired_bootstrap_ci(a, b, stat: Callable = np.mean, n_boot: int = 2000, alpha: float = 0.05,
                        seed: int = 0) -> BootstrapCI:
    """Percentile bootstrap CI of stat(a) - stat(b) for paired per-item arrays (same items, same
    order): each resample draws the same item indices for a and b, keeping the pairing."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) != len(b):
        raise ValueError("paired arrays must have the same length")
    n = len(a)
    if n == 0:
        return BootstrapCI(float("nan"), float("nan"), float("nan"), 0, n_boot, alpha)
    est = float(stat(a)) - float(stat(b))
    ba, bb = _boot_stats([a, b], stat, n_boot, np.random.default_rng(seed))
    lo, hi = np.quantile(ba - bb, [alpha / 2, 1 - alpha / 2])
    return BootstrapCI(est, float(lo), float(hi), n, n_boot, alpha)
