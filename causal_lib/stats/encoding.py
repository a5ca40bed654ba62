"""Encodings shared by the statistical tests: float rows, integer labels and one-hot blocks of discrete variables,
and the documented PCA reduction of a representation."""
from __future__ import annotations

import numpy as np


def as_2d(X) -> np.ndarray:
    """X as float64 rows (n, k): a vector (n,) becomes one column, more dimensions are flattened per row."""
    X = np.asarray(X, dtype=np.float64)
    return X[:, None] if X.ndim == 1 else X.reshape(len(X), -1)


def as_labels(Y) -> np.ndarray:
    """Integer labels 0..c-1 of a discrete variable given as labels (n,) or rows (n, k), e.g.
    one-hot family/goal with all-zero rows for clean items (the zero row is a label of its own)."""
    Y = np.asarray(Y)
    if Y.ndim == 1:
        return np.unique(Y, return_inverse=True)[1].reshape(-1)
    return np.unique(Y.reshape(len(Y), -1), axis=0, return_inverse=True)[1].reshape(-1)


def one_hot(labels, n_classes: int | None = None) -> np.ndarray:
    """(n, c) one-hot of discrete labels (any hashable values, or rows: see as_labels)."""
    lab = as_labels(labels)
    c = n_classes or (int(lab.max()) + 1 if len(lab) else 0)
    out = np.zeros((len(lab), c))
    out[np.arange(len(lab)), lab] = 1.0
    return out


def pca_reduce(X, k: int) -> np.ndarray:
    """Scores of X (centred) on its top-k principal components (all of X when it has <= k columns)."""
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    Xc = X - X.mean(axis=0)
    if Xc.shape[1] <= k:
        return Xc
    U, s, _ = np.linalg.svd(Xc, full_matrices=False)
    return U[:, :k] * s[:k]
