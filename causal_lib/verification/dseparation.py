"""Chapter 07: causal verification that can fail (DESIGN.md s.6, s.8).

For one model, on a fixed, seeded sample of test items (stats.n_independence of them, clean and injected
twins of the same documents):
- R is the one `representation()` of training, reduced by PCA to stats.repr_dim components fitted on that
  model's own R (documented reduction: HSIC power falls sharply with d, DESIGN.md s.8);
- d-separation: R independent of Z given S, Z = attack family (clean = its own label "none"), S = the
  system instruction; stratified permutation HSIC (verification.hsic.conditional_hsic_test), effect size beside p;
- power: the same test at the same n and d on the undefended base, and on the model's own R with a
  planted Z-dependence (verification.hsic.planted_dependence), both must reject;
- the PAC-Bayes bound on the injected-input error uses the teacher-forced greedy check (greedy decoding
  reproduces O* iff the argmax at every target position is the target token, eos included), which is
  exact for greedy decoding and costs one forward pass per noisy posterior sample.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from causal_lib.config import Config
from causal_lib.training.examples import make_pairs
from causal_lib.verification.encoding import as_labels, pca_reduce
from causal_lib.verification.hsic import conditional_hsic_test, planted_dependence
from causal_lib.verification.invariance import pair_forward


@dataclass
class Sample:
    pairs: list  # (clean, injected) records
    r_clean: np.ndarray
    r_injected: np.ndarray
    tv: np.ndarray


def test_pairs(records, n: int, seed: int) -> list[tuple]:
    """A fixed, seeded sample of at most n (clean, injected) test pairs (the same for every model), one per clean
    item: with several attacks per clean item (data.attacks_per_clean) its first variant, so that no clean row
    enters a test twice."""
    pairs, seen = [], set()
    for c, i in make_pairs(records):
        if c.id not in seen:
            seen.add(c.id)
            pairs.append((c, i))
    idx = np.random.default_rng(seed).permutation(len(pairs))[:n]
    return [pairs[i] for i in sorted(idx)]


def collect(model, tokenizer, pairs, cfg: Config) -> Sample:
    fwd = pair_forward(model, tokenizer, pairs, cfg.model, batch_size=cfg.eval.batch_size)
    return Sample(pairs, fwd.r_clean, fwd.r_injected, fwd.tv)




def dseparation_data(sample: Sample, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows: every clean and injected item of the sample. R reduced to k PCs; Z = family or 'none'; S = the
    task of the system instruction; G = pair id (the two twins of a pair share their data, so rows are
    exchangeable only within a pair: the test permutes Z within pairs)."""
    R = pca_reduce(np.concatenate([sample.r_clean, sample.r_injected]), k)
    Z = as_labels(["none"] * len(sample.pairs) + [p[1].family for p in sample.pairs])
    # strata = the task of S: paraphrases of one task are the same instruction, and coarser strata keep
    # enough rows per stratum for the permutation test (strata under 10 rows are dropped)
    S = as_labels([p[0].task for p in sample.pairs] * 2)
    G = np.tile(np.arange(len(sample.pairs)), 2)
    return R, Z, S, G


def dseparation(sample: Sample, cfg: Config, planted_strength: float | None = None) -> dict:
    sc = cfg.stats
    R, Z, S, G = dseparation_data(sample, sc.repr_dim)
    if planted_strength:
        R = planted_dependence(R, Z, planted_strength, seed=cfg.run.seed)
    res = conditional_hsic_test(R, Z, S, n_permutations=sc.n_permutations, seed=cfg.run.seed, groups=G)
    return {"p_value": res.p_value, "effect_size": res.effect_size, "statistic": res.statistic, "n": res.n,
            "d": R.shape[1], "method": res.method, "rejects": bool(res.p_value <= sc.alpha),
            "planted_strength": planted_strength}
