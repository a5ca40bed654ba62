"""The conditional-independence test of causal discovery (DESIGN.md section 8): X _||_ Y | C on whole
blocks of columns.

block_ci_test is the linear block test (partial canonical correlation, Bartlett's chi-square); a categorical
block (one-hot rows, e.g. the output category O) in the tested pair is instead the response of a
multinomial-logit likelihood-ratio test (_logit_lr). BlockLinearCIT wraps both for causal-learn and is
registered as indep_test="block_linear" when this module is imported: PC then runs on a data matrix with one
proxy column per node while the test reads the full blocks (discovery.run_pc), so "given R" always means given
the WHOLE R.
"""
from __future__ import annotations

import math

import numpy as np
from causallearn.utils.cit import CIT_Base, register_ci_test
from scipy import stats as sps

from causal_lib.stats.encoding import as_2d, as_labels
from causal_lib.stats.intervals import single_blas_thread


def _basis(X: np.ndarray, tol: float = 1e-8) -> np.ndarray:
    """Orthonormal basis (n, r) of the centred column space of X (rank-revealing SVD): one-hot blocks
    lose a dimension to the intercept and constant blocks (Z all clean) get r = 0."""
    Xc = X - X.mean(axis=0)
    if Xc.size == 0:
        return np.zeros((len(X), 0))
    U, s, _ = np.linalg.svd(Xc, full_matrices=False)
    if s.size == 0 or s[0] <= 0:
        return np.zeros((len(X), 0))
    return U[:, s > tol * s[0]]


def _residual_basis(Q: np.ndarray, C: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Orthonormal basis of the part of span(Q) orthogonal to span(C) (Q, C orthonormal)."""
    R = Q - C @ (C.T @ Q) if C.shape[1] else Q
    if R.shape[1] == 0:
        return R
    U, s, _ = np.linalg.svd(R, full_matrices=False)
    # Q is orthonormal, so s <= 1: an absolute threshold detects "X lies in span(C)".
    return U[:, s > tol]


@single_blas_thread
def block_ci_test(X, Y, C=None) -> tuple[float, float, int]:
    """Linear block test of X _||_ Y | C by partial canonical correlation (Bartlett's chi-square).

    X, Y, C: (n, p), (n, q), (n, k) blocks (C may be None or a list of blocks, concatenated).
    Residualise X and Y on [1, C] (OLS, i.e. projection on the orthogonal complement of span(1, C)),
    take the canonical correlations rho_1..rho_m of the residuals, then
        stat = -(n - 1 - k - (p + q + 1) / 2) * sum_i ln(1 - rho_i^2)   ~ chi2(p q) under H0
    (Bartlett 1938; p, q, k are the ranks after removing collinear columns). Exact for
    multivariate-normal residuals, asymptotically valid (a Wilks' lambda test) otherwise.
    Only LINEAR dependence is detected. Returns (p_value, stat, df); p = 1 when a residual is empty.
    """
    Qx, Qy = _basis(as_2d(X)), _basis(as_2d(Y))
    Cs = [] if C is None else ([C] if isinstance(C, np.ndarray) else list(C))
    Qc = _basis(np.concatenate([as_2d(c) for c in Cs], axis=1)) if Cs else np.zeros((len(Qx), 0))
    return _bartlett(Qx, Qy, Qc)


def _bartlett(Qx: np.ndarray, Qy: np.ndarray, Qc: np.ndarray) -> tuple[float, float, int]:
    n, k = len(Qx), Qc.shape[1]
    Ux, Uy = _residual_basis(Qx, Qc), _residual_basis(Qy, Qc)
    p, q = Ux.shape[1], Uy.shape[1]
    if p == 0 or q == 0:
        return 1.0, 0.0, 0
    factor = n - 1 - k - (p + q + 1) / 2.0
    if factor <= 0:
        raise ValueError(f"too few samples for the block test: n={n}, k={k}, p={p}, q={q}; "
                         "reduce the blocks (max_dim) or add items")
    rho = np.clip(np.linalg.svd(Ux.T @ Uy, compute_uv=False), 0.0, 1.0 - 1e-12)
    stat = float(-factor * np.sum(np.log1p(-rho**2)))
    df = p * q
    return float(sps.chi2.sf(stat, df)), stat, df


def _logit_lr(labels: np.ndarray, Qx: np.ndarray, Qc: np.ndarray) -> tuple[float, float, int]:
    """Likelihood-ratio test that a categorical Y (labels) does not depend on X given C:
    multinomial logistic regressions of Y on [1, C] and on [1, C, X];
    stat = 2 (loglik_full - loglik_reduced) ~ chi2((K - 1) * r) under H0, K = number of observed
    classes, r = rank of X's part orthogonal to C. Near-unpenalised (sklearn C = 1e4) for stability
    under (quasi-)separation."""
    from sklearn.linear_model import LogisticRegression

    n = len(labels)
    K = len(np.unique(labels))
    Ux = _residual_basis(Qx, Qc)
    r = Ux.shape[1]
    if K < 2 or r == 0:
        return 1.0, 0.0, 0

    def loglik(F):
        if F.shape[1] == 0:  # intercept only: the empirical class frequencies
            cnt = np.bincount(labels)
            cnt = cnt[cnt > 0]
            return float(np.sum(cnt * np.log(cnt / n)))
        m = LogisticRegression(C=1e4, max_iter=1000).fit(F, labels)
        P = m.predict_proba(F)[np.arange(n), np.searchsorted(m.classes_, labels)]
        return float(np.sum(np.log(np.clip(P, 1e-300, None))))

    # Unit-variance columns (orthonormal bases times sqrt(n)) keep lbfgs well conditioned.
    sc = math.sqrt(n)
    stat = max(0.0, 2.0 * (loglik(np.hstack([Qc, Ux]) * sc) - loglik(Qc * sc)))
    df = (K - 1) * r
    return float(sps.chi2.sf(stat, df)), stat, df


class BlockLinearCIT(CIT_Base):
    """causal-learn CI test over blocks: column j of the data matrix is only a proxy for node j; the
    test answers on blocks[j] (registered as indep_test="block_linear"; pass blocks=[...] to pc).

    categorical: indices of blocks that are categorical (one-hot rows, e.g. O). When a tested pair
    contains one, that block is the response of a multinomial-logit likelihood-ratio test (_logit_lr)
    instead of the linear test (the first listed one if both are categorical)."""

    def __init__(self, data, blocks=None, categorical=(), **kwargs):
        super().__init__(data, **kwargs)
        if blocks is None or len(blocks) != data.shape[1]:
            raise ValueError("block_linear needs blocks=[one array per column of data]")
        self.check_cache_method_consistent(
            "block_linear", str([np.shape(b) for b in blocks]) + str(list(categorical)))
        # Orthonormal bases once per block; each query then only projects and takes one SVD.
        self.bases = [_basis(as_2d(b)) for b in blocks]
        self.categorical = [int(c) for c in categorical]
        self.labels = {c: as_labels(blocks[c]) for c in self.categorical}

    def __call__(self, X, Y, condition_set=None):
        Xs, Ys, cond, key = self.get_formatted_XYZ_and_cachekey(X, Y, condition_set)
        if key in self.pvalue_cache:
            return self.pvalue_cache[key]
        n = self.sample_size
        x, y = Xs[0], Ys[0]
        Qc = (_basis(np.concatenate([self.bases[c] for c in cond], axis=1)) if cond
              else np.zeros((n, 0)))
        resp = [c for c in self.categorical if c in (x, y)]
        if resp:
            other = y if resp[0] == x else x
            p = _logit_lr(self.labels[resp[0]], self.bases[other], Qc)[0]
        else:
            p = _bartlett(self.bases[x], self.bases[y], Qc)[0]
        self.pvalue_cache[key] = p
        return p


register_ci_test("block_linear", BlockLinearCIT)
