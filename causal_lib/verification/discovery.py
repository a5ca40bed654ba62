"""Causal discovery over the nodes S, D, Z, R, O (DESIGN.md section 6 "causal graph match", section 8).

Each node is a block of columns, rows are items:
  S  one-hot of the task instruction (or task family),
  D  a few numeric features of the legitimate data,
  Z  one-hot of the attack family / goal, an all-zero row when the item is clean,
  R  the representation (hidden state), optionally reduced to its top `max_dim` principal components,
  O  features of the output, e.g. one_hot of {== O*, == O_inj, other} (see output_block).

PC (causal-learn) runs on a data matrix with ONE proxy column per node, while the registered block
test ("block_linear") holds the full blocks and answers every query X _||_ Y | C on whole blocks, so
"given R" always means given the WHOLE R. (Reducing R to 1-2 principal components made PC add false
S->O and D->O edges: a lossy R does not screen S and D off from O. DESIGN.md section 8.)

Measured on synthetic_blocks (n=1000, seeds 0-19): exact recovery 18/20 (undefended), 17/20
(defended, Z isolated 20/20); ~0.01-0.03 s per PC run. Any lossy reduction of R (max_dim below the
rank of R's signal: 1, 2 or even 8 PCs of a 16-dim R) broke recovery (0-1/20 undefended).
Pitfalls: a categorical O needs categorical=("O",) (see run_pc); stability must resample without
replacement (see bootstrap_stability); rows of counterfactual pairs are not independent (the linear
test then becomes conservative: 0.5% type-I for Z _||_ R | S, D with both rows of each pair).

Modules: ci_test (the block CI test, registered with causal-learn on import), graph_match (LearnedGraph, the
expected graph, graph_match; graph encoding there), discovery_plots (draw_graph). This module runs PC and its
resampling stability, builds the blocks and is what chapter 07 calls (discover).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from itertools import combinations

import numpy as np
from causallearn.search.ConstraintBased.PC import pc

from causal_lib.config import Config
from causal_lib.stats.encoding import as_labels, one_hot, pca_reduce
from causal_lib.stats.intervals import Rate, rate, single_blas_thread
from causal_lib.stats.encoding import as_2d
from causal_lib.verification.ci_test import _basis, block_ci_test  # noqa: F401 - registers "block_linear"
from causal_lib.verification.discovery_plots import draw_graph  # noqa: F401 - re-exported for chapter 07
from causal_lib.verification.dseparation import Sample
from causal_lib.verification.graph_match import NODES, LearnedGraph, expected_graph, graph_match
from causal_lib.verification.insertion_control import standardise


def output_block(matches_reference, matches_injection) -> np.ndarray:
    """O block from output checks: one-hot of 0 = output == O*, 1 = output == O_inj (the attack
    succeeded), 2 = anything else; a category that never occurs is dropped by the test (rank)."""
    ref = np.asarray(matches_reference, dtype=bool)
    inj = np.asarray(matches_injection, dtype=bool)
    cat = np.where(ref, 0, np.where(inj, 1, 2))
    return one_hot(cat, 3)


@single_blas_thread
def run_pc(blocks: dict[str, np.ndarray], alpha: float = 0.05, nodes=None, max_dim: int | None = None,
           categorical=(), stable: bool = True, uc_rule: int = 0,
           uc_priority: int = 2) -> LearnedGraph:
    """PC (causal-learn) with the block test "block_linear" over the given blocks.

    blocks: node name -> (n, d_node) array (1-D arrays are one column); nodes: the order (default
    S, D, Z, R, O restricted to the keys present, then any others). max_dim: if set, every block with
    more columns is replaced by its top max_dim principal components (a documented reduction; keep it
    generous for R, see the module docstring). The test needs n comfortably above the total number of
    conditioning columns (roughly n > 2 * sum of block widths).
    categorical: names of categorical blocks (one-hot rows) to test with the multinomial-logit LR test
    when they are in the tested pair, e.g. ("O",) when O is a one-hot output category: the linear
    test's residual of a categorical O on R leaves the nonlinear (softmax) part of O's dependence on R,
    which correlates with S and Z and produced false S->O / Z->O edges on synthetic data.
    Returns the CPDAG (uc_rule=0: colliders from sepsets; uc_priority=2: keep existing colliders).
    """
    if nodes is None:
        nodes = [v for v in NODES if v in blocks] + [v for v in blocks if v not in NODES]
    nodes = list(nodes)
    arrs = [as_2d(blocks[v]) for v in nodes]
    n = len(arrs[0])
    if any(len(a) != n for a in arrs):
        raise ValueError("all blocks need the same number of rows")
    if max_dim is not None:
        arrs = [pca_reduce(a, max_dim) if a.shape[1] > max_dim else a for a in arrs]
    # One proxy column per node (its first principal direction, or zeros for a constant block):
    # PC only needs the column count and a valid matrix; the test reads the blocks.
    proxy = np.zeros((n, len(arrs)))
    for j, a in enumerate(arrs):
        Q = _basis(a)
        if Q.shape[1]:
            proxy[:, j] = Q[:, 0]
    cat = [nodes.index(v) for v in categorical]
    cg = pc(proxy, alpha, indep_test="block_linear", blocks=arrs, categorical=cat, stable=stable,
            uc_rule=uc_rule,
            uc_priority=uc_priority, show_progress=False, node_names=nodes)
    return LearnedGraph(nodes, np.asarray(cg.G.graph, dtype=int).copy(), alpha)


@dataclass
class Stability:
    """Resampling stability of PC: over n_boot resamples of the items,
    edge_freq[e] = fraction of runs with exactly the edge e ('S->R', 'R--O', ...),
    adjacency_freq['A-B'] = fraction with any edge between A and B; with an expected graph also
    the mean and 2.5/97.5% quantiles of the match score, the exact-recovery rate and the hard-check
    pass rate (Clopper-Pearson over the resamples, which are not independent: descriptive only)."""

    n_boot: int
    alpha: float
    method: str
    sample_size: int
    edge_freq: dict
    adjacency_freq: dict
    mean_score: float | None = None
    score_lo: float | None = None
    score_hi: float | None = None
    exact: Rate | None = None
    hard_pass: Rate | None = None
    scores: list = field(default_factory=list)

    def to_dict(self) -> dict:
        out = asdict(self)
        for k in ("exact", "hard_pass"):
            out[k] = getattr(self, k).to_dict() if getattr(self, k) is not None else None
        return out


@single_blas_thread
def bootstrap_stability(blocks: dict[str, np.ndarray], n_boot: int = 50, alpha: float = 0.05,
                        seed: int = 0, expected: LearnedGraph | None = None,
                        method: str = "subsample", fraction: float = 0.5,
                        **pc_kwargs) -> Stability:
    """Run run_pc on n_boot seeded resamples of the rows and count edges (see Stability).

    method "subsample" (default): m = round(fraction * n) rows WITHOUT replacement (half-samples, as
    in stability selection): the frequencies describe PC at sample size m <= n, conservatively.
    method "bootstrap": n rows WITH replacement. Not recommended for PC with a parametric test: the
    duplicated rows make every test act as if it had n independent items while the resample's
    population (the empirical distribution) carries the sample's own chance correlations, so false
    edges appear much more often (on synthetic_blocks(800): exact recovery 0-5% of bootstrap
    resamples vs 50-90% of half-samples).
    """
    names = list(blocks)
    n = len(np.asarray(blocks[names[0]]))
    rng = np.random.default_rng(seed)
    m = n if method == "bootstrap" else int(round(fraction * n))
    if method not in ("subsample", "bootstrap"):
        raise ValueError(f"unknown method {method!r}: 'subsample' or 'bootstrap'")
    edge_counts: dict[str, int] = {}
    adj_counts: dict[str, int] = {}
    scores, exact, hard = [], 0, 0
    nodes = None
    for _ in range(n_boot):
        idx = rng.integers(0, n, n) if method == "bootstrap" else rng.choice(n, m, replace=False)
        G = run_pc({k: np.asarray(v)[idx] for k, v in blocks.items()}, alpha, **pc_kwargs)
        nodes = G.nodes
        for e in G.edges():
            edge_counts[e] = edge_counts.get(e, 0) + 1
        for a, b in combinations(G.nodes, 2):
            if G.adjacent(a, b):
                adj_counts[f"{a}-{b}"] = adj_counts.get(f"{a}-{b}", 0) + 1
        if expected is not None:
            mt = graph_match(G, expected)
            scores.append(mt["score"])
            exact += mt["exact"]
            hard += mt["hard_pass"]
    adjacency_freq = {f"{a}-{b}": adj_counts.get(f"{a}-{b}", 0) / n_boot
                      for a, b in combinations(nodes, 2)}
    edge_freq = {e: c / n_boot for e, c in sorted(edge_counts.items(), key=lambda t: -t[1])}
    out = Stability(n_boot, alpha, method, m, edge_freq, adjacency_freq)
    if expected is not None:
        out.scores = scores
        out.mean_score = float(np.mean(scores))
        out.score_lo, out.score_hi = (float(q) for q in np.quantile(scores, [0.025, 0.975]))
        out.exact, out.hard_pass = rate(exact, n_boot), rate(hard, n_boot)
    return out


def synthetic_blocks(n: int = 1000, defended: bool = True, seed: int = 0, n_tasks: int = 4,
                     d_data: int = 3, n_families: int = 3, d_r: int = 16, d_o: int = 3,
                     z_strength: float = 1.0, noise: float = 1.0,
                     o_categorical: bool = False) -> dict[str, np.ndarray]:
    """Linear-Gaussian blocks with the planted graph S -> R <- D, R -> O (+ Z -> R if not defended).

    S one-hot of n_tasks uniform tasks; D ~ N(0, I_{d_data}); Z one-hot of n_families with probability
    1/2 (else an all-zero clean row); R = S A + D B (+ z_strength * Z C) + noise * N(0, I_{d_r}) with
    A, B, C ~ N(0, 1) entries; O = R W / sqrt(d_r) + 0.5 N(0, I_{d_o}). S, D, Z are independent.
    o_categorical: O is instead a one-hot of d_o categories drawn from softmax(2 R W / sqrt(d_r))
    (a Gumbel-max draw), like an output category; test it with run_pc(..., categorical=("O",)).
    """
    rng = np.random.default_rng(seed)
    S = one_hot(rng.integers(0, n_tasks, n), n_tasks)
    D = rng.standard_normal((n, d_data))
    fam = rng.integers(0, n_families, n)
    Z = one_hot(fam, n_families) * (rng.random(n) < 0.5)[:, None]
    R = S @ rng.standard_normal((n_tasks, d_r)) + D @ rng.standard_normal((d_data, d_r))
    if not defended:
        R += z_strength * Z @ rng.standard_normal((n_families, d_r))
    R += noise * rng.standard_normal((n, d_r))
    W = rng.standard_normal((d_r, d_o)) / math.sqrt(d_r)
    if o_categorical:
        O = one_hot((2.0 * R @ W + rng.gumbel(size=(n, d_o))).argmax(axis=1), d_o)
    else:
        O = R @ W + 0.5 * rng.standard_normal((n, d_o))
    return {"S": S, "D": D, "Z": Z, "R": R, "O": O}


def discovery_blocks(sample: Sample, outputs_ok: np.ndarray, outputs_hijacked: np.ndarray,
                     k: int | None = None) -> dict:
    """Blocks S, D, Z, R, O over the sample's clean and injected items (DESIGN.md s.6 / s.8):
    S one-hot of the task of the system instruction (its paraphrases are one instruction, as in the
    d-separation test), D = a few numeric features of the legitimate data (length in words, number of lines,
    number of commas, digits), Z one-hot family (zero row when clean), R = the full representation
    standardised per coordinate (k: its top-k principal components instead, a lossy reduction that broke
    recovery: module docstring), O = one-hot of {== O*, attack succeeded, other}."""
    items = [p[0] for p in sample.pairs] + [p[1] for p in sample.pairs]
    S = one_hot(as_labels([r.task for r in items]))
    D = np.array([[len(r.clean_data.split()), r.clean_data.count("\n"), r.clean_data.count(","),
                   sum(c.isdigit() for c in r.clean_data)] for r in items], dtype=float)
    fam = [r.family if r.kind == "injected" else None for r in items]
    fams = sorted({f for f in fam if f})
    Z = np.array([[1.0 if f == x else 0.0 for x in fams] for f in fam])
    R = np.concatenate(standardise(sample.r_clean, sample.r_injected))
    if k is not None:
        R = pca_reduce(R, k)
    O = output_block(outputs_ok, outputs_hijacked)
    return {"S": S, "D": D, "Z": Z, "R": R, "O": O}


def discover(blocks: dict, defended: bool, cfg: Config, s_d_dependent: bool = True) -> dict:
    """PC over the blocks, the expected graph (for the world: S and D dependent) and bootstrap edge stability."""
    # O is a one-hot output category: tested with the multinomial-logit test (discovery.run_pc)
    g = run_pc(blocks, alpha=cfg.stats.alpha, categorical=("O",))
    exp = expected_graph(defended, s_d_dependent=s_d_dependent)
    stab = bootstrap_stability(blocks, n_boot=cfg.stats.discovery_bootstrap, alpha=cfg.stats.alpha,
                               seed=cfg.run.seed, expected=exp, categorical=("O",))
    return {"graph": g, "expected": exp, "match": graph_match(g, exp), "stability": stab}
