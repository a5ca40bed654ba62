"""Paired comparisons of two models on the same items (DESIGN.md s.6 "paired comparison").

Two defenses evaluated on the same attacked items give paired binary outcomes (attack succeeded or not).
Only the discordant items carry information about a difference: `b` items where A failed and B succeeded,
`c` items the other way round. The exact McNemar test is the two-sided binomial test of b against
Bin(b + c, 1/2). Several pairs are corrected together with Holm's step-down method. The minimum detectable
difference says what the test could have seen at this n: a non-significant pair is "no difference
detected", never "equal".

The twin control (DESIGN.md s.6) is applied jointly: an attacked item whose clean twin already passes the
attack check under EITHER model is dropped from that pair (`ineligible`), so both rates and the test are over
the same eligible items; per-model discounting would compare different denominators (a model whose clean
answers already print the payload would get those items as "attack failed"). `dropped` counts them.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass
class PairedResult:
    a: str
    b: str
    n: int  # items both models were scored on
    rate_a: float
    rate_b: float
    a_only: int  # items where A succeeded and B did not
    b_only: int  # items where B succeeded and A did not
    p_value: float
    p_holm: float | None = None
    significant: bool | None = None
    # common items left out because a clean twin already passed the attack check under either model (joint
    # twin control); None = no twin information was given
    dropped: int | None = None

    @property
    def difference(self) -> float:
        """rate_a - rate_b (on the same items)."""
        return self.rate_a - self.rate_b

    def to_dict(self) -> dict:
        return {**asdict(self), "difference": self.difference}


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the two discordant counts (1.0 when there are none)."""
    m = a_only + b_only
    if m == 0:
        return 1.0
    return float(stats.binomtest(a_only, m, 0.5, alternative="two-sided").pvalue)


def paired_outcomes(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray]:
    """The outcomes of two models on the items both have (item id -> bool), in one order."""
    ids = sorted(set(a) & set(b))
    return np.array([bool(a[i]) for i in ids], dtype=bool), np.array([bool(b[i]) for i in ids], dtype=bool)


def jointly_eligible(outcomes_a: dict, outcomes_b: dict, ineligible_a=None, ineligible_b=None) -> tuple[set, int]:
    """The items both models were scored on that neither model's twin control discounts (its clean twin did not
    already pass the attack check under A nor under B) -> (eligible ids, number of common items dropped)."""
    common = set(outcomes_a) & set(outcomes_b)
    drop = common & (set(ineligible_a or ()) | set(ineligible_b or ()))
    return common - drop, len(drop)


def compare_pair(name_a: str, outcomes_a: dict, name_b: str, outcomes_b: dict,
                 ineligible_a=None, ineligible_b=None) -> PairedResult:
    """Exact McNemar of A against B on their common items; `ineligible_a` / `ineligible_b` (ids whose clean twin
    already passes the attack check under that model) apply the twin control jointly: such an item is dropped
    for the pair whichever model it belongs to. Without them (both None) every common item is paired."""
    joint = ineligible_a is not None or ineligible_b is not None
    ids, dropped = jointly_eligible(outcomes_a, outcomes_b, ineligible_a, ineligible_b)
    x, y = paired_outcomes({i: outcomes_a[i] for i in ids}, {i: outcomes_b[i] for i in ids})
    n = len(x)
    a_only, b_only = int((x & ~y).sum()), int((~x & y).sum())
    return PairedResult(name_a, name_b, n, float(x.mean()) if n else float("nan"),
                        float(y.mean()) if n else float("nan"), a_only, b_only, mcnemar_exact(a_only, b_only),
                        dropped=dropped if joint else None)


def holm(p_values: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order."""
    m = len(p_values)
    order = np.argsort(p_values)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted.tolist()


def pairwise(outcomes: dict[str, dict], alpha: float = 0.05, ineligible: dict[str, set] | None = None) -> list[PairedResult]:
    """Every pair of models (in the given order) on their common items, Holm-corrected together. `ineligible`
    (model -> ids whose clean twin passes the attack check under it) applies the twin control jointly to each
    pair (compare_pair)."""
    inel = ineligible if ineligible is not None else {}
    joint = ineligible is not None
    results = [compare_pair(a, outcomes[a], b, outcomes[b], *((inel.get(a, set()), inel.get(b, set())) if joint else ()))
               for a, b in itertools.combinations(outcomes, 2)]
    for r, p in zip(results, holm([r.p_value for r in results])):
        r.p_holm, r.significant = p, p < alpha
    return results


def minimum_detectable_difference(n: int, discordant_share: float, alpha: float = 0.05, power: float = 0.8,
                                  n_tests: int = 1) -> float:
    """Smallest |rate_a - rate_b| that an exact McNemar test at level alpha / n_tests (Bonferroni, the
    conservative end of Holm) detects with the given power, when a share `discordant_share` of the n items
    is discordant: searched over the discordant split with the exact binomial test (no normal approximation).
    Returns nan when no difference is detectable (too few discordant items)."""
    m = int(round(n * discordant_share))
    if n <= 0 or m <= 0:
        return float("nan")
    level = alpha / max(n_tests, 1)
    # rejection region of the two-sided exact test for m discordant pairs
    ks = np.arange(m + 1)
    p_two = np.array([mcnemar_exact(int(k), int(m - k)) for k in ks])
    reject = p_two < level
    if not reject.any():
        return float("nan")
    for k_shift in range(m + 1):  # expected discordant split (m/2 + k_shift) : (m/2 - k_shift)
        q = min(1.0, 0.5 + k_shift / m)
        if stats.binom.pmf(ks, m, q)[reject].sum() >= power:
            return 2 * k_shift / n  # (b - c) / n at that split
    return float("nan")


def significance_matrix(results: list[PairedResult], names: list[str]) -> list[dict]:
    """Rows for a markdown table: one row per model, one column per model, cells 'p_holm (diff)'."""
    cell = {}
    for r in results:
        sign = "*" if r.significant else ""
        cell[(r.a, r.b)] = f"{r.difference:+.1%} (p={r.p_holm:.3g}){sign}"
        cell[(r.b, r.a)] = f"{-r.difference:+.1%} (p={r.p_holm:.3g}){sign}"
    return [{"": a, **{b: ("-" if a == b else cell.get((a, b), "n/a")) for b in names}} for a in names]


def sentence(r: PairedResult, label=lambda x: x, mdd: float | None = None) -> str:
    """One sentence per pair that says no more than the test does."""
    la, lb = label(r.a), label(r.b)
    where = (f"on the same {r.n} items eligible under both ({r.dropped} dropped where a clean twin already passed the "
             f"attack check under either model)" if r.dropped is not None else f"on the same {r.n} items")
    base = (f"{la} vs {lb}: {r.rate_a:.1%} vs {r.rate_b:.1%} {where} "
            f"({r.a_only} only {la}, {r.b_only} only {lb}; exact McNemar p = {r.p_value:.3g}, Holm {r.p_holm:.3g})")
    if r.significant:
        return base + f": {la if r.difference < 0 else lb} has the lower rate (significant)."
    tail = f"; differences below ~{mdd:.1%} could not be detected at this n" if mdd and not math.isnan(mdd) else ""
    return base + f": no difference detected{tail}."


# ------------------------------------------------------------------ across training seeds (issue 30, item 4)
#
# Exact McNemar covers which test items were drawn, not training randomness: two runs of the same recipe with
# another seed move the discordant counts. With several training seeds on the same test items, the outcomes
# form a seeds x items grid per model, and a claim must hold over both sources of variation. The test here is
# a two-way cluster bootstrap of the mean paired difference (items and seeds resampled independently, each
# with replacement: the items' and the seeds' variation both enter the interval); beside it each seed's own exact
# McNemar and an item-level sign-flip permutation test of the seed-averaged differences.

def seed_grid(per_seed_a: dict, per_seed_b: dict, ineligible: dict | None = None) -> tuple[list, list, np.ndarray, np.ndarray]:
    """(seeds, item ids, A, B): the boolean seeds x items outcome grids of two models over the items every seed of
    both scored and no seed's twin control discounts (`ineligible`: seed -> ids dropped under either model)."""
    seeds = sorted(set(per_seed_a) & set(per_seed_b))
    if not seeds:
        raise ValueError("across-seed comparison: the two models share no seed")
    ids = set.intersection(*[set(per_seed_a[s]) & set(per_seed_b[s]) for s in seeds])
    for s in seeds:
        ids -= set((ineligible or {}).get(s, ()))
    ids = sorted(ids)
    a = np.array([[bool(per_seed_a[s][i]) for i in ids] for s in seeds], dtype=bool).reshape(len(seeds), len(ids))
    b = np.array([[bool(per_seed_b[s][i]) for i in ids] for s in seeds], dtype=bool).reshape(len(seeds), len(ids))
    return seeds, ids, a, b


def across_seeds(name_a: str, per_seed_a: dict, name_b: str, per_seed_b: dict, ineligible: dict | None = None,
                 n_boot: int = 2000, n_perm: int = 2000, alpha: float = 0.05, seed: int = 0) -> dict:
    """A against B over training seeds and items. `per_seed_a` / `per_seed_b`: seed -> {item id -> attack
    succeeded}; `ineligible`: seed -> ids dropped for the pair (the joint twin control of each seed).

    -> {difference (mean rate_a - rate_b over seeds and items), lo, hi (two-way cluster bootstrap, percentile),
    significant (the interval excludes 0), p_sign_flip (items' seed-averaged differences, random signs),
    per_seed: [{seed, n, rate_a, rate_b, a_only, b_only, p_value}], n_items, seeds, p_value (two-sided bootstrap p,
    for Holm over several pairs), rate_a / rate_b (means over seeds and items)}. With one seed the interval is the
    items' bootstrap alone and says so (`seed_variation: False`). With 3 seeds the seeds' part of the interval is
    crude (resampling 3 values: their spread is underestimated by a factor (S-1)/S and the interval stays inside
    the seeds' range); it is what the run of record can afford, and README says so."""
    seeds, ids, a, b = seed_grid(per_seed_a, per_seed_b, ineligible)
    n_s, n_i = a.shape
    per_seed = []
    for k, s in enumerate(seeds):
        x, y = a[k], b[k]
        a_only, b_only = int((x & ~y).sum()), int((~x & y).sum())
        per_seed.append({"seed": s, "n": n_i, "rate_a": float(x.mean()) if n_i else float("nan"),
                         "rate_b": float(y.mean()) if n_i else float("nan"), "a_only": a_only, "b_only": b_only,
                         "p_value": mcnemar_exact(a_only, b_only)})
    out = {"a": name_a, "b": name_b, "seeds": seeds, "n_items": n_i, "per_seed": per_seed,
           "seed_variation": n_s > 1, "method": "two-way cluster bootstrap over items and seeds (percentile 95%)"}
    if n_i == 0:
        return {**out, "difference": float("nan"), "lo": float("nan"), "hi": float("nan"), "significant": False,
                "p_value": 1.0, "p_sign_flip": 1.0, "rate_a": float("nan"), "rate_b": float("nan"), "n": 0}
    d = a.astype(float) - b.astype(float)  # seeds x items
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for r in range(n_boot):
        si = rng.integers(0, n_s, n_s) if n_s > 1 else np.zeros(1, dtype=int)
        ii = rng.integers(0, n_i, n_i)
        boots[r] = d[np.ix_(si, ii)].mean()
    lo, hi = (float(v) for v in np.quantile(boots, [alpha / 2, 1 - alpha / 2]))
    item_means = d.mean(axis=0)
    observed = abs(item_means.sum())
    signs = rng.choice([-1.0, 1.0], size=(n_perm, n_i))
    p_flip = float((1 + (np.abs(signs @ item_means) >= observed - 1e-12).sum()) / (n_perm + 1))
    # a two-sided bootstrap p (the replicates on the other side of 0, doubled) for Holm over pairs; counted as
    # (1 + k) / (n_boot + 1), as the sign-flip p: never 0, its floor 2 / (n_boot + 1) when no replicate crosses 0
    other = min(int((boots <= 0).sum()), int((boots >= 0).sum()))
    p_boot = float(min(1.0, 2 * (1 + other) / (n_boot + 1)))
    return {**out, "difference": float(d.mean()), "lo": lo, "hi": hi, "significant": bool(lo > 0 or hi < 0),
            "p_value": p_boot, "p_sign_flip": p_flip,
            "rate_a": float(a.mean()), "rate_b": float(b.mean()), "n": n_i}
