"""Tests of causal_lib.discovery: the block CI test, PC recovery of the planted graphs, graph match,
bootstrap stability and drawing."""
import numpy as np
import pytest

from causal_lib.verification import discovery as dsc


def test_block_test_level_and_power():
    # X and Y both driven by a conditioning block C, independent given C.
    rej, det = 0, 0
    reps = 200
    for r in range(reps):
        rng = np.random.default_rng(r)
        C = rng.standard_normal((300, 6))
        X = C @ rng.standard_normal((6, 4)) + rng.standard_normal((300, 4))
        Y = C @ rng.standard_normal((6, 3)) + rng.standard_normal((300, 3))
        rej += dsc.block_ci_test(X, Y, C)[0] <= 0.05
        Y1 = Y + 0.25 * X[:, :1]
        det += dsc.block_ci_test(X, Y1, [C[:, :3], C[:, 3:]])[0] <= 0.05
    print(f"\nblock test n=300: type-I {rej / reps:.3f}, power {det / reps:.3f}")
    assert 0.02 <= rej / reps <= 0.08
    assert det / reps >= 0.9
    # Marginally dependent through C, so the unconditional test rejects.
    assert dsc.block_ci_test(X, Y)[0] < 1e-6


def test_block_test_degenerate_blocks():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((100, 3))
    assert dsc.block_ci_test(X, np.zeros((100, 2)))[0] == 1.0  # constant block: rank 0
    assert dsc.block_ci_test(X, X[:, :2] @ np.ones((2, 2)), X)[0] == 1.0  # Y in span(C)
    with pytest.raises(ValueError):
        dsc.block_ci_test(rng.standard_normal((15, 10)), rng.standard_normal((15, 10)),
                          rng.standard_normal((15, 8)))


def test_graph_edges_roundtrip_and_expected():
    G = dsc.LearnedGraph.from_edges(dsc.NODES, ["S->R", "O<->R", "D--Z"])
    assert G.edge("S", "R") == "->" and G.edge("R", "S") == "<-"
    assert G.edge("R", "O") == "<->" and G.edge("D", "Z") == "--" and G.edge("S", "O") == ""
    assert set(G.edges()) == {"S->R", "R<->O", "D--Z"}
    assert dsc.expected_graph(True).edges() == ["S->R", "D->R", "R->O"]
    assert set(dsc.expected_graph(False).edges()) == {"S->R", "D->R", "Z->R", "R->O"}


def test_graph_match_scores():
    exp = dsc.expected_graph(defended=True)
    m = dsc.graph_match(exp, exp)
    assert m["score"] == 1.0 and m["exact"] and m["hard_pass"]
    assert m["adjacency_precision"] == m["arrowhead_recall"] == 1.0
    # The undefended graph against the defended expectation: one extra edge, fails no_Z_R.
    m = dsc.graph_match(dsc.expected_graph(False), exp)
    assert m["shd"] == 1 and m["score"] == pytest.approx(0.9)
    assert not m["hard_checks"]["no_Z_R"] and not m["hard_pass"]
    # A wrong graph: everything reversed plus S->O and Z-O.
    wrong = dsc.LearnedGraph.from_edges(dsc.NODES, ["R->S", "R->D", "O->R", "S->O", "Z--O"])
    m = dsc.graph_match(wrong, exp)
    assert m["score"] <= 0.5
    assert m["adjacency_recall"] == 1.0 and m["adjacency_precision"] == 0.6
    assert m["arrowhead_recall"] == 0.0
    assert not m["hard_checks"]["no_S_O"] and not m["hard_checks"]["R_to_O"]
    # The empty graph: only the 3 expected edges are missing.
    m = dsc.graph_match(dsc.LearnedGraph.from_edges(dsc.NODES, []), exp)
    assert m["shd"] == 3 and m["adjacency_recall"] == 0.0 and not m["hard_pass"]


def test_pc_recovers_planted_undefended_graph():
    exact, hard = 0, 0
    for seed in range(10):
        G = dsc.run_pc(dsc.synthetic_blocks(1000, defended=False, seed=seed), alpha=0.05)
        m = dsc.graph_match(G, dsc.expected_graph(False))
        exact += m["exact"]
        hard += m["hard_pass"]
    print(f"\nPC block test, undefended, n=1000: exact {exact}/10, hard checks {hard}/10")
    assert exact >= 7


def test_pc_no_z_edge_when_z_has_no_effect():
    exact, z_free = 0, 0
    for seed in range(10):
        G = dsc.run_pc(dsc.synthetic_blocks(1000, defended=True, seed=seed), alpha=0.05)
        m = dsc.graph_match(G, dsc.expected_graph(True))
        exact += m["exact"]
        z_free += not any(G.adjacent("Z", v) for v in "SDRO")
    print(f"\nPC block test, defended, n=1000: exact {exact}/10, Z isolated {z_free}/10")
    assert exact >= 7 and z_free >= 9
    # The defended data do not match the undefended expectation (the metric separates them).
    assert dsc.graph_match(G, dsc.expected_graph(False))["score"] < 1.0


def test_pc_categorical_output():
    # O a one-hot category drawn from softmax(R W): the logit LR test keeps S and Z off O.
    hard = 0
    for seed in range(6):
        b = dsc.synthetic_blocks(1000, defended=True, seed=seed, o_categorical=True)
        G = dsc.run_pc(b, alpha=0.05, categorical=("O",))
        hard += dsc.graph_match(G, dsc.expected_graph(True))["hard_pass"]
    print(f"\nPC with categorical O (logit LR), defended: hard checks {hard}/6")
    assert hard >= 4


def test_bootstrap_stability():
    b = dsc.synthetic_blocks(1600, defended=False, seed=3)
    exp = dsc.expected_graph(False)
    s = dsc.bootstrap_stability(b, n_boot=10, alpha=0.05, seed=0, expected=exp)
    print(f"\nhalf-sample stability: {s.edge_freq}, mean score {s.mean_score:.2f}, exact {s.exact}")
    assert s.method == "subsample" and s.sample_size == 800
    assert s.edge_freq.get("S->R", 0) >= 0.8 and s.edge_freq.get("Z->R", 0) >= 0.8
    assert s.adjacency_freq["S-O"] <= 0.3
    assert s.mean_score >= 0.85 and s.exact.n == 10
    assert set(s.to_dict()) >= {"edge_freq", "adjacency_freq", "mean_score", "exact"}
    # The pitfall the default avoids: resampling WITH replacement adds false edges.
    sb = dsc.bootstrap_stability(b, n_boot=10, seed=0, expected=exp, method="bootstrap")
    print(f"with-replacement bootstrap: mean score {sb.mean_score:.2f}, exact {sb.exact}")
    assert sb.exact.k < s.exact.k


def test_max_dim_and_output_block():
    O = dsc.output_block([True, False, False, True], [False, True, False, False])
    assert O.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]]
    b = dsc.synthetic_blocks(600, defended=False, seed=1, d_r=40)
    G = dsc.run_pc(b, alpha=0.05, max_dim=20)
    assert G.nodes == list(dsc.NODES) and G.adjacent("S", "R")


def test_draw_graph():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    exp = dsc.expected_graph(True)
    G = dsc.LearnedGraph.from_edges(dsc.NODES, ["S->R", "D--R", "Z->R"])
    fig, ax = plt.subplots()
    assert dsc.draw_graph(G, ax=ax, expected=exp, title="test") is ax
    assert len(ax.patches) >= 4  # 3 learned edges + the missing R->O
    plt.close(fig)
