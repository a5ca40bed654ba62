"""Chapter 07: the plan's d-separation test R _||_ Z | S, with its controls (DESIGN.md s.6, s.8).

For every model, on a fixed, seeded sample of test pairs (the same for every model; stats.n_independence rows,
clean and injected twins of the same documents, plus each pair's benign twin, verification.insertion_control):
- R is the one `representation()` of training, read in the defense's own prompt format, standardised per
  coordinate and reduced to stats.repr_dim principal components of the model's rows (`reduced`: one rule for
  every model, one frame for a model's injected and benign test; HSIC power falls sharply with d, DESIGN.md s.8);
- d-separation: R independent of Z given S, Z = attack family (clean = its own label "none"), S = the task of
  the system instruction; stratified within-pair permutation HSIC (stats.hsic.conditional_hsic_test),
  effect size (CKA) and n beside p, and the p-value at growing n (`p_value_curve`);
- the same test with the benign insertion as Z: a model that reads its input rejects both, which is why the
  criterion is the comparison with the benign insertion (insertion_control), not this p-value;
- controls on the model's real R: labels swapped at random within pairs (a null: must not reject), and a
  planted Z-dependence on that null, planted on the full standardised R before the reduction (must reject; its
  rejection rate over repetitions is the test's power at this n and d, `planted_power`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from causal_lib.config import Config
from causal_lib.training.examples import make_pairs
from causal_lib.stats.encoding import as_labels, pca_reduce
from causal_lib.stats.hsic import conditional_hsic_test, planted_dependence
from causal_lib.verification.insertion_control import standardise
from causal_lib.stats.invariance import pair_forward


@dataclass
class Sample:
    pairs: list  # (clean, injected) records
    r_clean: np.ndarray
    r_injected: np.ndarray
    tv: np.ndarray
    # the benign-insertion control (verification.insertion_control): the benign twins and their R, TV
    benign: list | None = None
    r_benign: np.ndarray | None = None
    tv_benign: np.ndarray | None = None
    # R at further (layer, pooling) points (invariance.verification_points): name -> (R(clean), R(injected)),
    # and name -> R(benign twin)
    at: dict = field(default_factory=dict)
    at_benign: dict = field(default_factory=dict)


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


def collect(model, tokenizer, pairs, cfg: Config, benign: list | None = None, view=None, points=()) -> Sample:
    """R and TV of each pair (and of each (clean, benign twin) pair when `benign` is given) as the model reads
    them: `view(records) -> records` renders them in the defense's own prompt format (defenses.load.records_for);
    the sample keeps the world's records. `points`: (layer, pooling) pairs where R is also read (Sample.at)."""
    view = view or (lambda recs: recs)
    seen = [(c, i) for c, i in zip(view([p[0] for p in pairs]), view([p[1] for p in pairs]))]
    fwd = pair_forward(model, tokenizer, seen, cfg.model, batch_size=cfg.eval.batch_size, points=points)
    out = Sample(pairs, fwd.r_clean, fwd.r_injected, fwd.tv, at=fwd.at)
    if benign is not None:
        seen_b = list(zip(view([p[0] for p in pairs]), view(list(benign))))
        fb = pair_forward(model, tokenizer, seen_b, cfg.model, batch_size=cfg.eval.batch_size, points=points)
        out.benign, out.r_benign, out.tv_benign = list(benign), fb.r_injected, fb.tv
        out.at_benign = {k: ri for k, (_, ri) in fb.at.items()}
    return out


def reduced(sample: Sample, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """R(clean), R(injected), R(benign) in one model-wide frame: every coordinate standardised over all the
    sample's rows, then the top-k principal components of those rows together. The same rule for every model
    (so effect sizes compare across models), and one frame for the injected and the benign test of a model."""
    blocks = [sample.r_clean, sample.r_injected] + ([sample.r_benign] if sample.r_benign is not None else [])
    Z = pca_reduce(np.concatenate(standardise(*blocks)), k)
    m = len(sample.pairs)
    parts = [Z[j * m:(j + 1) * m] for j in range(len(blocks))]
    return parts[0], parts[1], (parts[2] if len(parts) > 2 else None)


def dseparation_data(sample: Sample, k: int, insertion: str = "injected"):
    """Rows: every clean item of the sample and its injected (or benign, insertion="benign") twin. R in the
    model-wide frame of `reduced`; Z = family (benign: "benign") or 'none'; S = the task of the system
    instruction; G = pair id (the two twins of a pair share their data, so rows are exchangeable only within
    a pair: the test permutes Z within pairs)."""
    rc, ri, rb = reduced(sample, k)
    if insertion == "benign":
        if rb is None:
            raise ValueError("the sample has no benign twins: collect(..., benign=...)")
        R, other = np.concatenate([rc, rb]), ["benign"] * len(sample.pairs)
    else:
        R, other = np.concatenate([rc, ri]), [p[1].family for p in sample.pairs]
    Z = as_labels(["none"] * len(sample.pairs) + other)
    # strata = the task of S: paraphrases of one task are the same instruction, and coarser strata keep
    # enough rows per stratum for the permutation test (strata under 10 rows are dropped)
    S = as_labels([p[0].task for p in sample.pairs] * 2)
    G = np.tile(np.arange(len(sample.pairs)), 2)
    return R, Z, S, G


def shuffle_within_pairs(Z: np.ndarray, G: np.ndarray, seed: int) -> np.ndarray:
    """Z with the two labels of each pair swapped at random (seeded): R is then independent of Z given the pair
    by construction - a null built from the model's real R, for a control of the test's size and power."""
    Z = np.asarray(Z).copy()
    rng = np.random.default_rng(seed)
    m = len(G) // 2
    swap = np.flatnonzero(rng.random(m) < 0.5)
    Z[swap], Z[swap + m] = Z[swap + m], Z[swap].copy()
    return Z


def dseparation(sample: Sample, cfg: Config, planted_strength: float | None = None, insertion: str = "injected",
                null_control: bool = False, rows: np.ndarray | None = None) -> dict:
    """The plan's test R _||_ Z | S (stratified within-pair permutation HSIC, stats.hsic) with its n.
    insertion: "injected" (the plan's Z) or "benign" (the control). null_control: the same test on the model's
    real R with the clean/inserted labels swapped at random within pairs (must not reject); planted_strength:
    a Z-dependent shift planted on that null (must reject: power on the real R's geometry, not on an R that
    already rejects). rows: a subset of pair indices (the p-versus-n curve)."""
    sc = cfg.stats
    if planted_strength:
        R, Z, S, G = planted_data(sample, sc.repr_dim, insertion, planted_strength, cfg.run.seed)
    else:
        R, Z, S, G = dseparation_data(sample, sc.repr_dim, insertion)
    if rows is not None:
        m = len(sample.pairs)
        idx = np.r_[rows, np.asarray(rows) + m]
        R, Z, S, G = R[idx], Z[idx], S[idx], as_labels(G[idx])
    if null_control and not planted_strength:
        Z = shuffle_within_pairs(Z, G, cfg.run.seed)
    res = conditional_hsic_test(R, Z, S, n_permutations=sc.n_permutations, seed=cfg.run.seed, groups=G)
    return {"p_value": res.p_value, "effect_size": res.effect_size, "statistic": res.statistic, "n": res.n,
            "d": R.shape[1], "method": res.method, "rejects": bool(res.p_value <= sc.alpha),
            "insertion": insertion, "null_control": bool(null_control or planted_strength),
            "planted_strength": planted_strength}


def planted_data(sample: Sample, k: int, insertion: str, strength: float, seed: int):
    """The power control's rows (issue 31, item 2): the labels swapped at random within pairs on the model's real R
    (a null), a Z-dependent shift of `strength` SD per coordinate planted on the FULL standardised R, and only then
    the reduction to k principal components: so the control shows whether the reduction keeps a dependence of that
    size, not only whether HSIC finds it in k dimensions. The frame is the tested rows' own ([clean, inserted]; the
    test proper reduces in the model-wide frame that also holds the benign twins). -> (R, Z, S, G)."""
    _, Z, S, G = dseparation_data(sample, k, insertion)
    other = sample.r_benign if insertion == "benign" else sample.r_injected
    if other is None:
        raise ValueError("the sample has no benign twins: collect(..., benign=...)")
    full = np.concatenate(standardise(sample.r_clean, other))
    Z = shuffle_within_pairs(Z, G, seed)
    return pca_reduce(planted_dependence(full, Z, strength, seed=seed), k), Z, S, G


def planted_power(sample: Sample, cfg: Config, strength: float, repetitions: int = 20,
                  insertion: str = "injected") -> dict:
    """The share of `repetitions` planted controls (each with its own label swap and shift direction, planted before
    the reduction) that the test rejects at alpha: the power at this n and d, with its Clopper-Pearson interval.
    A non-rejection of the plan's test is reported beside this number, never as evidence of independence."""
    from causal_lib.stats.intervals import rate

    sc = cfg.stats
    hits = 0
    for r in range(repetitions):
        R, Z, S, G = planted_data(sample, sc.repr_dim, insertion, strength, cfg.run.seed + 1000 + r)
        res = conditional_hsic_test(R, Z, S, n_permutations=sc.n_permutations, seed=cfg.run.seed + r, groups=G)
        hits += int(res.p_value <= sc.alpha)
    return {**rate(hits, repetitions).to_dict(), "strength": strength, "repetitions": repetitions,
            "planted": "before the reduction"}


def p_value_curve(sample: Sample, cfg: Config, sizes=(50, 100, 200, 500), insertion: str = "injected") -> list[dict]:
    """The test's p-value at growing numbers of pairs (nested seeded subsets of the sample): a model whose R
    depends on Z shows p falling with n; the curve shows at which n a dependence of this size becomes visible."""
    m = len(sample.pairs)
    order = np.random.default_rng(cfg.run.seed).permutation(m)
    out = []
    for k in sorted({min(s, m) for s in sizes if s >= 10}):
        r = dseparation(sample, cfg, insertion=insertion, rows=np.sort(order[:k]))
        out.append({"pairs": k, "n": r["n"], "p_value": r["p_value"], "effect_size": r["effect_size"]})
    return out
