"""Statistics of the book: rates with intervals, bootstrap, HSIC (in)dependence tests, calibration of a
test (type-I error and power), and PAC-Bayes bounds. One definition each (DESIGN.md sections 6 and 8).

Conventions used throughout
---------------------------
* Gaussian kernel: k(x, x') = exp(-||x - x'||^2 / (2 sigma^2)), with sigma from the median heuristic:
  the median of the Euclidean distances ||x_i - x_j|| over the pairs i < j of (a seeded random
  subsample of at most 1000 rows of) the variable's own data. Each variable gets its own sigma.
  This is the bandwidth of Gretton et al. (2008) and of hyppo's `Hsic` (gamma = 1 / (2 med^2));
  causal-learn's KCI with est_width='median' uses sqrt(2) * median instead (a wider kernel).
* Delta kernel for discrete variables (task, attack family / goal labels, one-hot rows):
  l(z, z') = 1[z == z']. A one-hot row and an all-zero row ("clean") are just two labels.
* H = I - 11^T / n, Kc = H K H. Biased HSIC: HSIC_b = tr(Kc Lc) / n^2 (= sum(Kc * L) / n^2).
* Effect size (CKA, centred kernel alignment): HSIC_b(X, Y) / sqrt(HSIC_b(X, X) HSIC_b(Y, Y))
  = <Kc, Lc>_F / (||Kc||_F ||Lc||_F), in [0, 1]; it does not grow with n, so it is comparable
  across sample sizes, unlike the p-value. (hyppo's Hsic statistic with bias=True is sqrt(CKA).)
* Rows must be exchangeable under the null. The clean and injected items of a counterfactual pair
  are not: give their pair ids as `groups` to conditional_hsic_test (within-pair permutation).

Measured here (2-core CPU, one BLAS thread): gamma test at n=2000, d=64 with discrete Z 0.10-0.13 s;
type-I error at alpha 0.05: 5.0% (n=150, d=8, 400 reps), 5.45% (n=1000, d=64, 2000 reps),
5.8% (n=2000, d=64, 1200 reps).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
from scipy import stats as sps

from causal_lib.core import progress
from causal_lib.stats.encoding import as_2d, as_labels, one_hot
from causal_lib.stats.intervals import Rate, rate, single_blas_thread


def _sq_dists(X: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """scale * ||x_i - x_j||^2, clipped at 0 against rounding, from one GEMM of augmented rows:
    [-2x_i, |x_i|^2, 1] . [x_j, 1, |x_j|^2] = |x_i - x_j|^2 (no passes over the n x n result to add the norms).
    scale < 0 gives the exponent of a Gaussian kernel directly (clipped at 0 from above)."""
    X = np.asarray(X, dtype=np.float64)
    sq = np.einsum("ij,ij->i", X, X)
    one = np.ones((len(X), 1))
    A = np.hstack([X * (-2.0 * scale), sq[:, None] * scale, one * scale])
    B = np.hstack([X, one, sq[:, None]])
    D = A @ B.T
    (np.maximum if scale >= 0 else np.minimum)(D, 0.0, out=D)
    np.fill_diagonal(D, 0.0)
    return D


def median_bandwidth(X, max_points: int = 1000, seed: int = 0) -> float:
    """Median heuristic sigma: median of ||x_i - x_j|| over pairs i < j of a seeded random subsample of
    at most `max_points` rows (the median of ~5e5 pairwise distances is already stable; this keeps the
    cost O(max_points^2 d)). Falls back to the median of the positive distances when more than half
    are 0 (ties, discrete data), then to 1.0 when all are 0 (constant data)."""
    X = as_2d(X)
    n = len(X)
    if n > max_points:
        X = X[np.random.default_rng(seed).choice(n, max_points, replace=False)]
    m = len(X)
    if m < 2:
        return 1.0
    d2 = _sq_dists(X)[np.triu(np.ones((m, m), dtype=bool), 1)]
    med = _sqrt_median(d2)
    if med <= 0:
        pos = d2[d2 > 0]
        med = _sqrt_median(pos) if pos.size else 1.0
    return med


def _sqrt_median(d2: np.ndarray) -> float:
    """np.median(np.sqrt(d2)) without the square root of every element (sqrt is monotone: take the
    middle order statistics of d2 and average their roots)."""
    k = len(d2)
    mid = [(k - 1) // 2, k // 2]
    part = np.partition(d2, mid)
    return float((math.sqrt(part[mid[0]]) + math.sqrt(part[mid[1]])) / 2.0)


def gaussian_gram(X, sigma: float | None = None, max_points: int = 1000, seed: int = 0) -> np.ndarray:
    """K_ij = exp(-||x_i - x_j||^2 / (2 sigma^2)); sigma = median_bandwidth(X) when None."""
    X = as_2d(X)
    if sigma is None:
        sigma = median_bandwidth(X, max_points, seed)
    import torch

    K = _sq_dists(X, scale=-1.0 / (2.0 * sigma * sigma))
    torch.from_numpy(K).exp_()  # in place on K; ~3.5x faster than np.exp on float64 (vectorised, threaded)
    return K


def delta_gram(Y) -> np.ndarray:
    """L_ij = 1[y_i == y_j] for a discrete variable (labels or rows, see as_labels)."""
    lab = as_labels(Y)
    return (lab[:, None] == lab[None, :]).astype(np.float64)


def center_gram(K: np.ndarray, inplace: bool = False) -> np.ndarray:
    """H K H with H = I - 11^T/n, in O(n^2) (row/column means, no matrix products)."""
    Kc = K if inplace else K.copy()
    col = Kc.mean(axis=0)
    row = Kc.mean(axis=1)
    Kc -= col[None, :]
    Kc -= row[:, None]
    Kc += col.mean()
    return Kc


@dataclass
class HSICResult:
    """statistic: biased HSIC_b = tr(Kc Lc)/n^2 (for the conditional test: sum_s (n_s/n) HSIC_b,s
    over the informative strata; for Fisher: the chi-square -2 sum log p_s); effect_size: CKA (see the
    module docstring; conditional: n_s-weighted mean of per-stratum CKA); p_value; n; method."""

    statistic: float
    effect_size: float
    p_value: float
    n: int
    method: str
    n_permutations: int = 0
    strata_used: int | None = None

    def rejects(self, alpha: float = 0.05) -> bool:
        return self.p_value <= alpha

    def to_dict(self) -> dict:
        return asdict(self)


def _gram(V, discrete: bool, sigma: float | None, max_points: int, seed: int) -> np.ndarray:
    return delta_gram(V) if discrete else gaussian_gram(V, sigma, max_points, seed)


def _center_stats(K: np.ndarray) -> tuple[float, float]:
    """Centre K in place (H K H, as center_gram) -> (mean diagonal, mean off-diagonal) of the uncentred K."""
    n = len(K)
    d = float(np.trace(K)) / n
    col = K.mean(axis=0)
    row = K.mean(axis=1)
    total = float(col.mean())
    mu = (total * n * n - n * d) / (n * (n - 1))
    K -= col[None, :]
    K -= (row - total)[:, None]
    return d, mu


def _hsic_parts(K: np.ndarray, L: np.ndarray):
    """From uncentred K, L: (HSIC_b, CKA, gamma-approximation p-value, Kc, None, degenerate).
    K, L are overwritten (K by Kc; L is scratch). Sums of products are BLAS dot products over the
    flattened matrices, so no n x n temporary is allocated: ~2x faster at n = 2000 (README, Performance)."""
    K, L = np.ascontiguousarray(K, dtype=np.float64), np.ascontiguousarray(L, dtype=np.float64)
    n = len(K)
    # Null moments (Gretton et al. 2008, hsicTestGamma): mu = mean off-diagonal kernel value;
    # E[HSIC_b] = (1/n)(dK - muK)(dL - muL) with dK the mean diagonal (= 1 for Gaussian/delta
    # kernels, giving Gretton's (1/n)(1 + muK muL - muK - muL)).
    dK, muK = _center_stats(K)
    dL, muL = _center_stats(L)
    Kc, k, l_ = K, K.reshape(-1), L.reshape(-1)
    kl = float(np.dot(k, l_))
    hsic = kl / n**2
    kk, ll = float(np.dot(k, k)), float(np.dot(l_, l_))
    cka = kl / math.sqrt(kk * ll) if kk > 0 and ll > 0 else 0.0
    # Var[HSIC_b] = 2 (n-4)(n-5) / (n (n-1)(n-2)(n-3)) * mean_{i != j} (Kc_ij Lc_ij)^2.
    diag = np.diagonal(K) * np.diagonal(L)
    np.multiply(K, L, out=L)
    p2 = L.reshape(-1)
    off = (float(np.dot(p2, p2)) - float(np.dot(diag, diag))) / (n * (n - 1))
    mean = (dK - muK) * (dL - muL) / n
    var = 2.0 * (n - 4) * (n - 5) / (n * (n - 1) * (n - 2) * (n - 3)) * off if n > 5 else 0.0
    degenerate = kk <= 1e-18 * n * n or ll <= 1e-18 * n * n  # a constant variable (up to rounding)
    if degenerate:
        cka = 0.0
    if degenerate or mean <= 0 or var <= 0:
        p = 1.0  # a constant variable: no evidence of dependence
    else:
        p = float(sps.gamma.sf(hsic, mean**2 / var, scale=var / mean))
    return hsic, cka, p, Kc, None, degenerate


def _perm_stats_discrete(Kc: np.ndarray, labels: np.ndarray, perms: np.ndarray,
                         max_bytes: float = 64e6) -> np.ndarray:
    """sum(Kc * L_pi) for each permutation pi (rows of perms), L the delta kernel of `labels`.

    With Y one-hot (n, c) and Y_pi = Y[pi]: sum(Kc * Y_pi Y_pi^T) = sum(Y_pi * (Kc @ Y_pi)), so a chunk
    of permutations is one GEMM Kc @ [Y_pi1 | Y_pi2 | ...] (Kc is centred, so L needs no centring).
    """
    n = len(Kc)
    Y = one_hot(labels)
    c = Y.shape[1]
    chunk = max(1, int(max_bytes // (8 * n * c)))
    out = np.empty(len(perms))
    for s in range(0, len(perms), chunk):
        P = perms[s:s + chunk]
        Yp = Y[P]                                   # (b, n, c)
        M = Yp.transpose(1, 0, 2).reshape(n, -1)     # (n, b*c)
        KM = Kc @ M
        out[s:s + chunk] = (M * KM).reshape(n, len(P), c).sum(axis=(0, 2))
    return out


def _perm_stats_dense(Kc: np.ndarray, L: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """sum(Kc * L[pi][:, pi]) for each permutation (continuous Y: one O(n^2) gather each)."""
    return np.array([float(np.einsum("ij,ij->", Kc, L[np.ix_(p, p)])) for p in perms])


def _permutations(n: int, B: int, rng) -> np.ndarray:
    # argsort of uniforms: B independent uniform permutations in one vectorised call.
    return np.argsort(rng.random((B, n)), axis=1)


@single_blas_thread
def hsic_test(X, Y, method: str = "gamma", n_permutations: int = 500, seed: int = 0,
              y_discrete: bool = False, x_discrete: bool = False, sigma_x: float | None = None,
              sigma_y: float | None = None, max_median_points: int = 1000) -> HSICResult:
    """HSIC test of X independent of Y (rows are paired samples).

    X, Y: (n,) or (n, d). Continuous variables get a Gaussian kernel with the median-heuristic
    bandwidth of their own data (sigma_x / sigma_y override it); discrete ones (y_discrete /
    x_discrete: labels or one-hot rows) a delta kernel.
    method:
      "gamma": p = P(Gamma > HSIC_b), the Gamma with the null mean and variance of HSIC_b
               (Gretton et al. 2008). O(n^2 d); ~0.1-0.3 s at n = 2000, d = 64 on 2 cores.
      "permutation": p = (1 + #{b: HSIC_b(X, Y_pi_b) >= HSIC_b(X, Y)}) / (1 + B), B = n_permutations
               uniform permutations of Y (seeded). Batched GEMMs for discrete Y; a gather per
               permutation for continuous Y.
    """
    X, Yarr = np.asarray(X), np.asarray(Y)
    n = len(X)
    if len(Yarr) != n:
        raise ValueError(f"X and Y must have the same number of rows, got {n} and {len(Yarr)}")
    if n < 6:
        raise ValueError("HSIC needs at least 6 samples")
    K = _gram(X, x_discrete, sigma_x, max_median_points, seed)
    L = _gram(Yarr, y_discrete, sigma_y, max_median_points, seed)
    if method == "gamma":
        hsic, cka, p, _, _, _ = _hsic_parts(K, L)
        return HSICResult(hsic, cka, p, n, "gamma")
    if method != "permutation":
        raise ValueError(f"unknown method {method!r}: 'gamma' or 'permutation'")
    L_raw = None if y_discrete else L.copy()
    hsic, cka, _, Kc, _, _ = _hsic_parts(K, L)
    perms = _permutations(n, n_permutations, np.random.default_rng(seed))
    if y_discrete:
        null = _perm_stats_discrete(Kc, as_labels(Yarr), perms)
    else:
        null = _perm_stats_dense(Kc, L_raw, perms)
    null /= n**2
    # Tolerance so that permutations that reproduce the statistic exactly count as >= (rounding).
    p = (1.0 + np.sum(null >= hsic - 1e-12 * abs(hsic))) / (1.0 + n_permutations)
    return HSICResult(hsic, cka, float(p), n, "permutation", n_permutations)


@single_blas_thread
def _group_permutations(groups: np.ndarray, B: int, rng) -> np.ndarray:
    """B permutations of range(n) that move each index only within its group (labels 0..G-1):
    sorting by group + U(0, 1) shuffles inside the group blocks of the group-sorted order."""
    order0 = np.argsort(groups, kind="stable")
    order_b = np.argsort(groups[None, :] + rng.random((B, len(groups))), axis=1)
    perm = np.empty_like(order_b)
    perm[:, order0] = order_b
    return perm


def conditional_hsic_test(X, Y, S_labels, method: str = "stratified_permutation",
                          n_permutations: int = 500, seed: int = 0, y_discrete: bool = True,
                          min_stratum: int = 10, sigma_x: float | None = None,
                          sigma_y: float | None = None, max_median_points: int = 1000,
                          groups=None) -> HSICResult:
    """Test of X independent of Y given a discrete S (e.g. R independent of Z given the task S).

    S_labels: labels or one-hot rows of the strata. The kernel bandwidths are the median heuristic
    on the whole sample (one kernel for all strata). Only informative strata are used: at least
    `min_stratum` items and neither X nor Y constant in the stratum.
    method:
      "stratified_permutation" (default): statistic T = sum_s (n_s / n) HSIC_b(X_s, Y_s), each
          stratum centred on its own; null by permuting Y within each stratum (B = n_permutations
          seeded draws), p = (1 + #{T_b >= T}) / (1 + B). Exact under H0 for any X-S and Y-S relation,
          because within a stratum the Y values are exchangeable given X when X is independent of Y
          given S - for i.i.d. rows.
      "fisher": one gamma HSIC test per stratum, combined by Fisher's method:
          -2 sum_s log p_s ~ chi2(2 m) under H0 (m informative strata). Faster, but relies on the
          gamma approximation in each (small) stratum.
    groups: optional labels of dependent rows, nested in the strata - e.g. the pair id when the rows
      are the clean and injected items of counterfactual pairs. Y is then permuted only within groups
      (for pairs: the clean / injected labels swapped at random), which is the valid null for
      "injecting Z does not change the distribution of X given the pair's S and D". Do NOT give both
      rows of a pair to the plain stratified permutation: the rows of a pair share D, so the free
      permutation puts same-pair rows under one label, which the design never does, and the test
      becomes extremely conservative (p ~ 1 and no power on synthetic pairs; see the tests).
      Only with method "stratified_permutation".
    """
    X, Yarr = np.asarray(X), np.asarray(Y)
    n = len(X)
    strata = as_labels(S_labels)
    if not (len(Yarr) == n == len(strata)):
        raise ValueError("X, Y and S_labels must have the same number of rows")
    if groups is not None:
        groups = as_labels(groups)
        if len(groups) != n:
            raise ValueError("groups must have one label per row")
        if method != "stratified_permutation":
            raise ValueError("groups need method='stratified_permutation'")
        if len(np.unique(np.stack([groups, strata]), axis=1).T) != len(np.unique(groups)):
            raise ValueError("every group must lie inside one stratum (pairs share S)")
    Xf = as_2d(X)
    sx = sigma_x if sigma_x is not None else median_bandwidth(Xf, max_median_points, seed)
    if not y_discrete:
        Yf = as_2d(Yarr)
        sy = sigma_y if sigma_y is not None else median_bandwidth(Yf, max_median_points, seed)
    ylab = as_labels(Yarr) if y_discrete else None
    rng = np.random.default_rng(seed)

    stats_, ckas, weights, pvals, nulls = [], [], [], [], []
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        if len(idx) < min_stratum:
            continue
        if y_discrete and len(np.unique(ylab[idx])) < 2:
            continue
        K = gaussian_gram(Xf[idx], sx)
        L = delta_gram(ylab[idx]) if y_discrete else gaussian_gram(Yf[idx], sy)
        L_raw = None if y_discrete else L.copy()
        hsic, cka, p, Kc, _, degenerate = _hsic_parts(K, L)
        if degenerate:
            continue  # constant X or Y in this stratum: no information
        w = len(idx) / n
        stats_.append(hsic), ckas.append(cka), weights.append(w), pvals.append(p)
        if method == "stratified_permutation":
            perms = (_permutations(len(idx), n_permutations, rng) if groups is None
                     else _group_permutations(as_labels(groups[idx]), n_permutations, rng))
            null = (_perm_stats_discrete(Kc, as_labels(ylab[idx]), perms) if y_discrete
                    else _perm_stats_dense(Kc, L_raw, perms))
            nulls.append(w * null / len(idx) ** 2)

    m = len(stats_)
    if m == 0:
        return HSICResult(0.0, 0.0, 1.0, n, method, 0, 0)
    w = np.array(weights)
    cka = float(np.sum(w * np.array(ckas)) / w.sum())
    if method == "fisher":
        chi = float(-2.0 * np.sum(np.log(np.clip(pvals, 1e-300, 1.0))))
        return HSICResult(chi, cka, float(sps.chi2.sf(chi, 2 * m)), n, "fisher", 0, m)
    if method != "stratified_permutation":
        raise ValueError(f"unknown method {method!r}: 'stratified_permutation' or 'fisher'")
    T = float(np.sum(w * np.array(stats_)))
    null = np.sum(nulls, axis=0)
    p = (1.0 + np.sum(null >= T - 1e-12 * abs(T))) / (1.0 + n_permutations)
    return HSICResult(T, cka, float(p), n, "stratified_permutation", n_permutations, m)


def planted_dependence(X, Z, strength: float, seed: int = 0) -> np.ndarray:
    """Copy of X (n, d) with a Z-dependent mean shift: the planted-dependence (power) control.

    For each label c of Z (labels or one-hot rows; the all-zero "clean" row is a label too) a
    direction v_c ~ N(0, I_d) is drawn (seeded) and rescaled to ||v_c|| = sqrt(d); row i gets
    X_i + strength * sd (*) v_{z_i}, with sd the per-coordinate standard deviation of X.
    So `strength` is the shift per coordinate in units of that coordinate's SD (RMS over
    coordinates): 0 plants nothing, and the distance between two class means is about
    strength * sqrt(2) * ||sd||, i.e. `strength` times the typical distance between two rows.
    """
    X = as_2d(X)
    lab = as_labels(Z)
    d = X.shape[1]
    rng = np.random.default_rng(seed)
    V = rng.standard_normal((int(lab.max()) + 1, d))
    V *= math.sqrt(d) / np.linalg.norm(V, axis=1, keepdims=True)
    sd = X.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return X + strength * sd[None, :] * V[lab]


@dataclass
class Calibration:
    """Type-I error (rejections on independent data) and power (rejections on planted dependence)
    of a test at level alpha, each a Rate with its Clopper-Pearson interval."""

    type1: Rate
    power: Rate
    alpha: float
    n: int
    d: int
    repetitions: int
    effect: float
    seconds_per_test: float
    conditional: bool = False
    paired: bool = False

    def to_dict(self) -> dict:
        out = asdict(self)
        out["type1"], out["power"] = self.type1.to_dict(), self.power.to_dict()
        return out


def _p_of(result) -> float:
    return float(result.p_value if hasattr(result, "p_value") else result)


@single_blas_thread
def calibrate(test_fn: Callable, n: int, d: int, repetitions: int = 200, alpha: float = 0.05,
              seed: int = 0, effect: float = 0.3, n_classes: int = 4,
              n_strata: int | None = None, paired: bool = False) -> Calibration:
    """Type-I error and power of `test_fn` at sample size n and dimension d.

    Each repetition r (seed + r) draws R ~ N(0, I_d) (n rows) and labels Z uniform on n_classes.
      * n_strata None, paired False: test_fn(R, Z) -> p-value (or an object with .p_value).
        Null: R independent of Z. Alternative: planted_dependence(R, Z, effect).
      * n_strata given (for conditional tests): S uniform on n_strata, Z = S mod n_classes with
        probability 0.7 (else uniform), R shifted by planted_dependence(., S, 1.0): R and Z are both
        driven by S, so R is NOT independent of Z, but R is independent of Z given S.
        test_fn(R, Z, S) is called. Alternative: planted_dependence(R, Z, effect) on top.
      * paired True (counterfactual pairs, as in the book): n // 2 pairs; a pair shares S (uniform on
        n_strata, default 4) and a data part D ~ N(0, I_d) plus planted_dependence(., S, 1.0); its
        clean row is D + N(0, I_d) with Z = 0, its injected row D + N(0, I_d) with Z uniform on
        1..n_classes-1. test_fn(R, Z, S, pair_ids) is called. Alternative:
        planted_dependence(R, Z, effect).
    Returns the rejection rates (p <= alpha) with Clopper-Pearson intervals.
    """
    rej0 = rej1 = 0
    t = 0.0
    t_start = time.perf_counter()
    for r in range(repetitions):
        progress.report(f"calibrate: repetition {progress.eta(r, repetitions, time.perf_counter() - t_start)} "
                        f"(n={n}, d={d})", key="calibrate")
        rng = np.random.default_rng(seed + r)
        if paired:
            m = n // 2
            S1 = rng.integers(0, n_strata or 4, m)
            D = planted_dependence(rng.standard_normal((m, d)), S1, 1.0, seed=seed + r + 10**6)
            R = np.vstack([D, D]) + rng.standard_normal((2 * m, d))
            Z = np.r_[np.zeros(m, int), rng.integers(1, max(n_classes, 2), m)]
            args = (np.r_[S1, S1], np.r_[np.arange(m), np.arange(m)])
        elif n_strata is None:
            R = rng.standard_normal((n, d))
            Z = rng.integers(0, n_classes, n)
            args = ()
        else:
            R = rng.standard_normal((n, d))
            S = rng.integers(0, n_strata, n)
            Z = np.where(rng.random(n) < 0.7, S % n_classes, rng.integers(0, n_classes, n))
            R = planted_dependence(R, S, 1.0, seed=seed + r + 10**6)
            args = (S,)
        R1 = planted_dependence(R, Z, effect, seed=seed + r + 2 * 10**6)
        t0 = time.perf_counter()
        rej0 += _p_of(test_fn(R, Z, *args)) <= alpha
        t += time.perf_counter() - t0
        rej1 += _p_of(test_fn(R1, Z, *args)) <= alpha
    return Calibration(rate(rej0, repetitions), rate(rej1, repetitions), alpha, len(R), d,
                       repetitions, effect, t / max(repetitions, 1),
                       n_strata is not None or paired, paired)


def time_gamma_test(n: int = 2000, d: int = 64, repeat: int = 3, seed: int = 0) -> float:
    """Median wall time (s) of one hsic_test(method='gamma') on R (n, d) Gaussian vs 4 discrete labels
    (y_discrete) - the d-separation setting. The benchmark target is <= 0.3 s at n=2000, d=64."""
    rng = np.random.default_rng(seed)
    R, Z = rng.standard_normal((n, d)), rng.integers(0, 4, n)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        hsic_test(R, Z, method="gamma", y_discrete=True)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))
