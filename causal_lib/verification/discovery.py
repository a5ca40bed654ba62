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

Graph encoding (causal-learn's): g[a, b] is the endpoint mark AT a of the edge between a and b:
0 no edge, -1 tail, 1 arrowhead. So a -> b is g[a, b] = -1, g[b, a] = 1; a -- b is -1, -1;
a <-> b is 1, 1.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from itertools import combinations

import numpy as np
from causallearn.search.ConstraintBased.PC import pc
from causallearn.utils.cit import CIT_Base, register_ci_test
from scipy import stats as sps

from causal_lib.config import Config
from causal_lib.verification.dseparation import Sample
from causal_lib.stats.encoding import as_labels, one_hot, pca_reduce
from causal_lib.verification.insertion_control import standardise
from causal_lib.stats.intervals import Rate, rate, single_blas_thread

NODES = ("S", "D", "Z", "R", "O")


TAIL, ARROW = -1, 1




def output_block(matches_reference, matches_injection) -> np.ndarray:
    """O block from output checks: one-hot of 0 = output == O*, 1 = output == O_inj (the attack
    succeeded), 2 = anything else; a category that never occurs is dropped by the test (rank)."""
    ref = np.asarray(matches_reference, dtype=bool)
    inj = np.asarray(matches_injection, dtype=bool)
    cat = np.where(ref, 0, np.where(inj, 1, 2))
    return one_hot(cat, 3)




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
    Qx, Qy = _basis(_as2d(X)), _basis(_as2d(Y))
    Cs = [] if C is None else ([C] if isinstance(C, np.ndarray) else list(C))
    Qc = _basis(np.concatenate([_as2d(c) for c in Cs], axis=1)) if Cs else np.zeros((len(Qx), 0))
    return _bartlett(Qx, Qy, Qc)


def _as2d(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    return X[:, None] if X.ndim == 1 else X.reshape(len(X), -1)


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
        self.bases = [_basis(_as2d(b)) for b in blocks]
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


@dataclass
class LearnedGraph:
    """A (CP)DAG over named nodes; g uses causal-learn's endpoint encoding (module docstring)."""

    nodes: list[str]
    g: np.ndarray
    alpha: float | None = None

    def index(self, a: str) -> int:
        return self.nodes.index(a)

    def edge(self, a: str, b: str) -> str:
        """'->' (a -> b), '<-', '--', '<->' or '' (no edge)."""
        i, j = self.index(a), self.index(b)
        ma, mb = self.g[i, j], self.g[j, i]  # marks at a and at b
        if ma == 0 and mb == 0:
            return ""
        return {(TAIL, ARROW): "->", (ARROW, TAIL): "<-", (TAIL, TAIL): "--",
                (ARROW, ARROW): "<->"}.get((int(ma), int(mb)), "?")

    def adjacent(self, a: str, b: str) -> bool:
        return self.edge(a, b) != ""

    def edges(self) -> list[str]:
        """Edges as strings in node order, e.g. ['S->R', 'D->R', 'R->O']; '<-' is written reversed."""
        out = []
        for a, b in combinations(self.nodes, 2):
            e = self.edge(a, b)
            if e == "<-":
                out.append(f"{b}->{a}")
            elif e:
                out.append(f"{a}{e}{b}")
        return out

    def arrowheads(self) -> set[tuple[str, str]]:
        """{(a, b): the edge between a and b has an arrowhead at b}."""
        return {(a, b) for a in self.nodes for b in self.nodes
                if a != b and self.g[self.index(b), self.index(a)] == ARROW}

    @classmethod
    def from_edges(cls, nodes, edges) -> "LearnedGraph":
        """From strings 'A->B', 'A--B', 'A<->B'."""
        nodes = list(nodes)
        g = np.zeros((len(nodes), len(nodes)), dtype=int)
        for e in edges:
            for sym, (ma, mb) in (("<->", (ARROW, ARROW)), ("->", (TAIL, ARROW)), ("--", (TAIL, TAIL))):
                if sym in e:
                    a, b = e.split(sym)
                    i, j = nodes.index(a.strip()), nodes.index(b.strip())
                    g[i, j], g[j, i] = ma, mb
                    break
            else:
                raise ValueError(f"bad edge {e!r}")
        return cls(nodes, g)

    def to_dict(self) -> dict:
        return {"nodes": list(self.nodes), "edges": self.edges(), "alpha": self.alpha}


def expected_graph(defended: bool, nodes=NODES, s_d_dependent: bool = False) -> LearnedGraph:
    """Expected CPDAG over S, D, Z, R, O.

    With S, D, Z mutually independent (s_d_dependent False, e.g. synthetic_blocks):
      defended (Z has no causal effect): S -> R <- D, R -> O, Z isolated (no edge at all);
      undefended: the same plus Z -> R.
      Both CPDAGs equal their DAGs: S -> R <- D (and Z -> R) are unshielded colliders, so compelled, and R -> O
      is compelled by Meek's rule 1 (S -> R - O with S, O non-adjacent).
    The world makes S and D dependent (s_d_dependent True, the book): a task is drawn among those that fit the
    document's kind, and D's features differ by kind, so the DAG has D -> S. Then S -> R <- D is shielded:
      undefended: Z -> R <- S and Z -> R <- D are still unshielded colliders, so S -> R, D -> R, Z -> R and
        (Meek 1) R -> O stay compelled; S - D is undirected (its direction is not identifiable);
      defended: no unshielded collider is left: S - D, S - R, D - R and R - O are all undirected, and the
        hard check on R -> O becomes "R and O adjacent, with no arrowhead at R" (graph_match).
    """
    dag = ["S->R", "D->R", "R->O"] + ([] if defended else ["Z->R"]) + (["D->S"] if s_d_dependent else [])
    return cpdag_of(nodes, dag)


def cpdag_of(nodes, dag_edges) -> LearnedGraph:
    """The CPDAG (Markov equivalence class) of a DAG given as 'A->B' strings, by causal-learn's dag2cpdag."""
    from causallearn.graph.GeneralGraph import GeneralGraph
    from causallearn.graph.GraphNode import GraphNode
    from causallearn.utils.DAG2CPDAG import dag2cpdag

    gnodes = {n: GraphNode(n) for n in nodes}
    G = GeneralGraph(list(gnodes.values()))
    for e in dag_edges:
        a, b = (x.strip() for x in e.split("->"))
        G.add_directed_edge(gnodes[a], gnodes[b])
    return LearnedGraph(list(nodes), np.asarray(dag2cpdag(G).graph, dtype=int).copy())


def _shd_state(G: LearnedGraph, a: str, b: str) -> tuple[int, int]:
    i, j = G.index(a), G.index(b)
    return int(G.g[i, j]), int(G.g[j, i])


def _pr(tp: int, n_pred: int, n_true: int) -> tuple[float, float]:
    # Vacuous cases are 1.0: no claimed edges means no false claims; no true edges, none missed.
    return (tp / n_pred if n_pred else 1.0), (tp / n_true if n_true else 1.0)


def graph_match(learned: LearnedGraph, expected: LearnedGraph) -> dict:
    """Compare a learned CPDAG with the expected one (same node names).

    shd: number of node pairs whose edge differs (missing, extra, or other marks: reversed,
        undirected vs directed); at most one per pair, so shd <= C(p, 2) and
        score = 1 - shd / C(p, 2) is in [0, 1] (1 = identical).
    adjacency precision/recall: over unordered adjacent pairs; arrowhead precision/recall: over
        (a, b) with an arrowhead at b. An empty denominator gives 1.0.
    hard checks: no S-O, D-O, Z-O edge; R -> O as the expected graph has it (oriented where it is compelled;
        where the expected graph leaves R - O undirected, adjacent with no arrowhead at R); and, when the
        expected graph has no Z-R edge (defended), no Z-R edge. hard_pass = all of them.
    """
    nodes = list(expected.nodes)
    pairs = list(combinations(nodes, 2))
    shd = sum(_shd_state(learned, a, b) != _shd_state(expected, a, b) for a, b in pairs)
    adj_l = {(a, b) for a, b in pairs if learned.adjacent(a, b)}
    adj_e = {(a, b) for a, b in pairs if expected.adjacent(a, b)}
    ah_l, ah_e = learned.arrowheads(), expected.arrowheads()
    ap, ar = _pr(len(adj_l & adj_e), len(adj_l), len(adj_e))
    hp, hr = _pr(len(ah_l & ah_e), len(ah_l), len(ah_e))
    hard = {}
    if {"S", "D", "Z", "R", "O"} <= set(nodes):
        hard = {"no_S_O": not learned.adjacent("S", "O"), "no_D_O": not learned.adjacent("D", "O"),
                "no_Z_O": not learned.adjacent("Z", "O"),
                "R_to_O": learned.edge("R", "O") in (("->", "--") if expected.edge("R", "O") == "--" else ("->",))}
        if not expected.adjacent("Z", "R"):
            hard["no_Z_R"] = not learned.adjacent("Z", "R")
    return {
        "shd": int(shd), "score": 1.0 - shd / len(pairs), "exact": shd == 0,
        "adjacency_precision": ap, "adjacency_recall": ar,
        "arrowhead_precision": hp, "arrowhead_recall": hr,
        "hard_checks": hard, "hard_pass": all(hard.values()),
        "learned_edges": learned.edges(), "expected_edges": expected.edges(),
    }


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
    arrs = [_as2d(blocks[v]) for v in nodes]
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


POSITIONS = {"S": (0.0, 2.0), "D": (1.0, 2.0), "Z": (2.0, 2.0), "R": (1.0, 1.0), "O": (1.0, 0.0)}


def draw_graph(learned: LearnedGraph, ax=None, expected: LearnedGraph | None = None,
               title: str | None = None):
    """Draw the graph with fixed positions (S, D, Z top; R middle; O bottom). With `expected`:
    green = edge as expected, orange = right adjacency with other marks, red = extra edge,
    dashed grey = expected edge missing. Undirected edges have no arrowheads. Returns ax."""
    import matplotlib.pyplot as plt
    import networkx as nx

    if ax is None:
        _, ax = plt.subplots(figsize=(3.6, 3.6))
    nodes = list(learned.nodes)
    pos = {v: POSITIONS.get(v, (3.0, 1.0 - 0.5 * i)) for i, v in enumerate(nodes)}
    G = nx.DiGraph()
    G.add_nodes_from(nodes)
    nx.draw_networkx_nodes(G, pos, ax=ax, node_color="#dde7f3", edgecolors="#345", node_size=900)
    nx.draw_networkx_labels(G, pos, ax=ax, font_weight="bold")

    def colour(a, b):
        if expected is None:
            return "black"
        if expected.edge(a, b) == learned.edge(a, b):
            return "green"
        return "orange" if expected.adjacent(a, b) else "red"

    for a, b in combinations(nodes, 2):
        e = learned.edge(a, b)
        if not e:
            continue
        src, dst = (b, a) if e == "<-" else (a, b)
        style = {"->": "-|>", "<-": "-|>", "--": "-", "<->": "<|-|>"}.get(e, "-")
        nx.draw_networkx_edges(G, pos, edgelist=[(src, dst)], ax=ax, arrows=True, arrowstyle=style,
                               arrowsize=18, width=2, edge_color=colour(a, b), node_size=900)
    if expected is not None:
        missing = [(a, b) for a, b in combinations(nodes, 2)
                   if expected.adjacent(a, b) and not learned.adjacent(a, b)]
        for a, b in missing:
            src, dst = (b, a) if expected.edge(a, b) == "<-" else (a, b)
            nx.draw_networkx_edges(G, pos, edgelist=[(src, dst)], ax=ax, arrows=True, arrowstyle="-",
                                   style="dashed", edge_color="grey", width=1.5, node_size=900)
    ax.set_xlim(-0.5, 2.5 if all(v in POSITIONS for v in nodes) else 3.5)
    ax.set_ylim(-0.5, 2.5)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


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
