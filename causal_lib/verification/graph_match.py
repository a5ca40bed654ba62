"""Graphs over the discovery nodes S, D, Z, R, O and their match against the expected graph (DESIGN.md
section 6 "causal graph match"): LearnedGraph, the expected CPDAG of the world (expected_graph, cpdag_of) and
graph_match (SHD score, adjacency/arrowhead precision and recall, the hard checks).

Graph encoding (causal-learn's): g[a, b] is the endpoint mark AT a of the edge between a and b:
0 no edge, -1 tail, 1 arrowhead. So a -> b is g[a, b] = -1, g[b, a] = 1; a -- b is -1, -1;
a <-> b is 1, 1.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

NODES = ("S", "D", "Z", "R", "O")


TAIL, ARROW = -1, 1


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
