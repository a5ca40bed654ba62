"""The trained data classifier, one detector of the input filter (defenses.filters): TF-IDF (character and
word n-grams) + logistic regression on the data segment U, fitted on the TRAIN split only (clean data and
benign look-alikes negative, injected data positive). Saved as plain JSON (vocabularies, idf, coefficients),
never pickle, and validated on load; the run's copy is checkpoints/filter/classifier.json (classifier_path).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from causal_lib.config import Config
from causal_lib.data.records import load_split
from causal_lib.defenses.cards import write_model_card
from causal_lib.defenses.filter_kad import _data_of

CLASSIFIER_FORMAT = "causal-pi/tfidf-logreg/1"


_VEC_PARAMS = ("analyzer", "ngram_range", "lowercase", "min_df", "max_df", "max_features", "sublinear_tf", "norm",
               "use_idf", "smooth_idf", "token_pattern", "strip_accents")


class DataClassifier:
    """P(injected | U) from TF-IDF character (2-5, within word bounds) and word (1-2) n-grams and a
    class-balanced logistic regression. Inference is computed here (sparse features @ coef + intercept,
    logistic), so a classifier rebuilt from its JSON gives exactly the same scores."""

    def __init__(self, threshold: float = 0.5, char_ngrams=(2, 5), word_ngrams=(1, 2), max_features: int = 50000,
                 min_df: int = 2, C: float = 4.0, seed: int = 0, name: str = "classifier"):
        self.threshold, self.C, self.seed, self.name = float(threshold), float(C), int(seed), name
        self.vec_params = [
            dict(analyzer="char_wb", ngram_range=tuple(char_ngrams), lowercase=True, min_df=min_df, max_df=1.0,
                 max_features=max_features, sublinear_tf=True, norm="l2", use_idf=True, smooth_idf=True,
                 token_pattern=None, strip_accents=None),
            dict(analyzer="word", ngram_range=tuple(word_ngrams), lowercase=True, min_df=min_df, max_df=1.0,
                 max_features=max_features, sublinear_tf=True, norm="l2", use_idf=True, smooth_idf=True,
                 token_pattern=r"(?u)\b\w+\b", strip_accents=None),
        ]
        self.vectorizers = None
        self.coef = None
        self.intercept = 0.0
        self.train_info: dict = {}

    # -- fitting
    def fit(self, texts: Sequence[str], labels: Sequence[int]) -> "DataClassifier":
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        y = np.asarray(labels, dtype=int)
        if len(set(y.tolist())) != 2:
            raise ValueError("the classifier needs both clean (0) and injected (1) training texts")
        self.vectorizers = [TfidfVectorizer(**p, dtype=np.float64) for p in self.vec_params]
        X = self._hstack([v.fit_transform(texts) for v in self.vectorizers])
        lr = LogisticRegression(C=self.C, class_weight="balanced", solver="liblinear", max_iter=2000,
                                random_state=self.seed)
        lr.fit(X, y)
        self.coef = lr.coef_.ravel().astype(np.float64)
        self.intercept = float(lr.intercept_[0])
        self.train_info = {"n": int(len(y)), "n_injected": int(y.sum()), "n_clean": int(len(y) - y.sum()),
                           "n_features": int(X.shape[1])}
        return self

    @staticmethod
    def _hstack(blocks):
        from scipy.sparse import hstack

        return hstack(blocks, format="csr")

    # -- inference
    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """Probability that each text carries an injection."""
        if self.vectorizers is None:
            raise RuntimeError("DataClassifier is not fitted: call fit() or DataClassifier.load()")
        if len(texts) == 0:
            return np.zeros(0)
        X = self._hstack([v.transform(list(texts)) for v in self.vectorizers])
        z = X @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))

    def predict(self, texts: Sequence[str]) -> list[bool]:
        return [bool(s >= self.threshold) for s in self.scores(texts)]

    def flags(self, records: Sequence) -> list[bool]:
        return self.predict([_data_of(r) for r in records])

    __call__ = flags

    # -- persistence: JSON only (pickle could run code on load)
    def to_dict(self) -> dict:
        if self.vectorizers is None:
            raise RuntimeError("DataClassifier is not fitted")
        vecs = []
        for v, p in zip(self.vectorizers, self.vec_params):
            vocab = [None] * len(v.vocabulary_)
            for term, i in v.vocabulary_.items():
                vocab[i] = term
            vecs.append({"params": {k: (list(p[k]) if isinstance(p[k], tuple) else p[k]) for k in _VEC_PARAMS},
                         "vocabulary": vocab, "idf": [float(x) for x in v.idf_]})
        return {"format": CLASSIFIER_FORMAT, "threshold": self.threshold, "C": self.C, "seed": self.seed,
                "name": self.name, "vectorizers": vecs, "coef": [float(x) for x in self.coef],
                "intercept": self.intercept, "train_info": self.train_info}

    @classmethod
    def from_dict(cls, d: dict) -> "DataClassifier":
        from sklearn.feature_extraction.text import TfidfVectorizer

        def bad(why):
            return ValueError(f"not a valid saved classifier ({why})")

        if not isinstance(d, dict) or d.get("format") != CLASSIFIER_FORMAT:
            raise bad(f"format {d.get('format') if isinstance(d, dict) else type(d).__name__!r}, "
                      f"expected {CLASSIFIER_FORMAT!r}")
        for k in ("vectorizers", "coef", "intercept", "threshold"):
            if k not in d:
                raise bad(f"missing {k!r}")
        if not isinstance(d["vectorizers"], list) or not d["vectorizers"]:
            raise bad("no vectorizers")
        self = cls(threshold=d["threshold"], C=d.get("C", 4.0), seed=d.get("seed", 0), name=d.get("name", "classifier"))
        self.vectorizers, self.vec_params, n_features = [], [], 0
        for j, v in enumerate(d["vectorizers"]):
            p = dict(v.get("params", {}))
            unknown = set(p) - set(_VEC_PARAMS)
            if unknown:
                raise bad(f"vectorizer {j}: unknown parameters {sorted(unknown)}")
            p["ngram_range"] = tuple(p["ngram_range"])
            vocab, idf = v.get("vocabulary"), v.get("idf")
            if not isinstance(vocab, list) or not isinstance(idf, list) or len(vocab) != len(idf) or not vocab:
                raise bad(f"vectorizer {j}: vocabulary and idf must be non-empty lists of the same length")
            if len(set(vocab)) != len(vocab) or not all(isinstance(t, str) for t in vocab):
                raise bad(f"vectorizer {j}: vocabulary terms must be distinct strings")
            idf_arr = np.asarray(idf, dtype=np.float64)
            if not np.isfinite(idf_arr).all():
                raise bad(f"vectorizer {j}: non-finite idf")
            # max_features/min_df only act while fitting; the vocabulary is fixed here.
            vec = TfidfVectorizer(**{k: p[k] for k in _VEC_PARAMS if k not in ("max_features", "min_df", "max_df")},
                                  vocabulary={t: i for i, t in enumerate(vocab)}, dtype=np.float64)
            vec.idf_ = idf_arr
            self.vectorizers.append(vec)
            self.vec_params.append(p)
            n_features += len(vocab)
        coef = np.asarray(d["coef"], dtype=np.float64)
        if coef.shape != (n_features,) or not np.isfinite(coef).all() or not math.isfinite(float(d["intercept"])):
            raise bad(f"coef must hold {n_features} finite values (one per vocabulary term), got {coef.size}")
        self.coef, self.intercept = coef, float(d["intercept"])
        self.train_info = dict(d.get("train_info", {}))
        return self

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict()))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path) -> "DataClassifier":
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read the classifier at {path}: {e}") from None
        try:
            return cls.from_dict(d)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from None


def classifier_training_data(records: Sequence) -> tuple[list[str], list[int]]:
    """(texts, labels) from TRAIN records: clean data and benign look-alikes 0, injected data 1 (held-out
    families never)."""
    texts, labels = [], []
    for r in records:
        if getattr(r, "split", "train") != "train" or getattr(r, "held_out", False):
            continue
        if r.kind in ("clean", "lookalike"):
            texts.append(r.data)
            labels.append(0)
        elif r.kind == "injected":
            texts.append(r.data)
            labels.append(1)
    return texts, labels


def train_classifier(records: Sequence, seed: int = 0, **kwargs) -> DataClassifier:
    """Fit the data classifier on TRAIN records only (records of another split are refused)."""
    other = sorted({r.split for r in records if getattr(r, "split", "train") != "train"})
    if other:
        raise ValueError(f"the classifier is trained on the train split only; got records of {other}")
    texts, labels = classifier_training_data(records)
    return DataClassifier(seed=seed, **kwargs).fit(texts, labels)


def classifier_path(paths) -> Path:
    return paths.checkpoints / "filter" / "classifier.json"


def fit_filter_classifier(cfg: Config, paths, records=None, **kwargs) -> DataClassifier:
    """Train the classifier on the run's train split (or `records`), save it as JSON under
    checkpoints/filter/ with a model card."""

    if records is None:

        records = load_split(paths.data, "train")
    clf = train_classifier(records, seed=cfg.run.seed, **kwargs)
    p = clf.save(classifier_path(paths))
    write_model_card(p.parent, cfg, {"defense": "filter", "method": "TF-IDF char+word n-grams + logistic regression "
                                     "on the data segment (train split)", "classifier": str(p.name),
                                     "threshold": clf.threshold, "train_info": clf.train_info})
    return clf
