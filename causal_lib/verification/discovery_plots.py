"""Plot of a learned discovery graph against the expected one (fixed node positions)."""
from __future__ import annotations

from itertools import combinations

from causal_lib.verification.graph_match import LearnedGraph

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
