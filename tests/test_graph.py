"""Node classification (issue 14, point 4): graph data, the DGraph-Fin reader, GCN / GraphSAGE
with RAA and ARR. Learning to far above chance is in tests/test_archs_train_slow.py."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from biasbench.data import build_data
from biasbench.data.graph import DGRAPH_ARRAYS, GraphBatch, GraphSplit, sbm
from biasbench.data.loader import make_eval_loader, make_train_loader
from biasbench.errors import UserError
from biasbench.layers.raa import RAA
from biasbench.models import build_model, model_hooks
from biasbench.recipe import DataConfig
from tests.conftest import one_line_error, run_cli, tiny_recipe, write_recipe


def test_the_block_model_has_class_dependent_edges_and_features():
    g = sbm(nodes=400, classes=2, features=8, p_in=0.1, p_out=0.01, noise=0.5, seed=3)
    src, dst = g.edge_index
    pairs = set(zip(src.tolist(), dst.tolist()))
    assert all((b, a) in pairs for a, b in pairs) and not any(a == b for a, b in pairs)  # undirected, no loops
    same = (g.y[src] == g.y[dst]).float().mean().item()
    assert same > 0.85  # p_in / (p_in + p_out) = 0.91 of the edges stay in a class
    within = torch.stack([g.x[g.y == c].mean(0) for c in (0, 1)])
    assert (within[0] - within[1]).norm() > 1.0  # the centroids differ, the noise is 0.5


def test_sbm_graph_splits_are_disjoint_labelled_nodes_of_one_graph():
    bundle = build_data(DataConfig(name="sbm_graph", val_fraction=0.25))
    splits = [bundle.train, bundle.val, bundle.test]
    assert all(isinstance(s, GraphSplit) and s.graph is bundle.train.graph for s in splits)
    ids = torch.cat([s.nodes for s in splits])
    assert len(ids) == len(set(ids.tolist())) == 600  # stratified fractions: 20% test, a quarter of the rest
    assert abs(len(bundle.test) - 120) <= 2 and abs(len(bundle.val) - 120) <= 2
    assert bundle.input_shape == (16,) and bundle.num_outputs == 3
    # a training batch is the whole graph and a shuffled share of the training nodes
    loader = make_train_loader(bundle, DataConfig(name="sbm_graph"), 100, torch.device("cpu"), seed=0)
    batches = list(loader)
    assert len(batches) == len(loader) == 4
    seen = torch.cat([b.nodes for b, _ in batches])
    assert torch.equal(torch.sort(seen).values, torch.sort(bundle.train.nodes).values)
    for batch, y in batches:
        assert batch.x.shape == (600, 16) and torch.equal(y, bundle.train.graph.y[batch.nodes])
    (whole, _), = list(make_eval_loader(bundle, bundle.test, DataConfig(name="sbm_graph"), 10_000, torch.device("cpu")))
    assert torch.equal(whole.nodes, bundle.test.nodes)


def _dgraph_file(path, drop: str | None = None, n: int = 50) -> None:
    """A file in the DGraph-Fin release's layout: x (N, 17), y in {0, 1, 2, 3}, edge_index (E, 2),
    edge types and times, and node-id arrays for the three splits."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, n)
    labelled = np.flatnonzero(y < 2)
    arrays = {"x": rng.normal(3.0, 2.0, (n, 17)).astype(np.float32), "y": y,
              "edge_index": rng.integers(0, n, (120, 2)), "edge_type": rng.integers(0, 12, 120),
              "edge_timestamp": rng.integers(1, 822, 120), "train_mask": labelled[: len(labelled) // 2],
              "valid_mask": labelled[len(labelled) // 2: 3 * len(labelled) // 4],
              "test_mask": labelled[3 * len(labelled) // 4:]}
    if drop:
        del arrays[drop]
    np.savez(path / "dgraphfin.npz", **arrays)


def test_the_dgraphfin_reader_reads_the_release_layout(tmp_path):
    _dgraph_file(tmp_path)
    bundle = build_data(DataConfig(name="dgraphfin", root=str(tmp_path)))
    with np.load(tmp_path / "dgraphfin.npz") as f:
        raw = {k: f[k] for k in f.files}
    graph = bundle.train.graph
    assert torch.equal(graph.edge_index, torch.from_numpy(raw["edge_index"]).t())  # (E, 2) -> (2, E)
    for split, key in ((bundle.train, "train_mask"), (bundle.val, "valid_mask"), (bundle.test, "test_mask")):
        assert torch.equal(split.nodes, torch.from_numpy(raw[key]))
    torch.testing.assert_close(graph.x.mean(0), torch.zeros(17), atol=1e-5, rtol=0)  # standardised
    torch.testing.assert_close(graph.x.std(0), torch.ones(17), atol=1e-5, rtol=0)
    assert bundle.num_outputs == 2 and bundle.input_shape == (17,)  # background nodes 2, 3 are in no split
    assert "release" in bundle.describe()["val_split"]


@pytest.mark.parametrize("drop", ["edge_index", "valid_mask"])
def test_a_dgraph_file_with_missing_arrays_is_one_line(tmp_path, drop):
    _dgraph_file(tmp_path, drop=drop)
    doc = tiny_recipe(tmp_path, model={"name": "gcn", "options": {}}, data={"name": "dgraphfin", "root": str(tmp_path)})
    code, _, err = run_cli(["train", str(write_recipe(tmp_path / "r.yaml", doc))])
    one_line_error(code, err, "not a DGraph-Fin release file", drop)
    assert not (tmp_path / "runs").exists()


def test_a_corrupt_or_absent_dgraph_file_is_one_line(tmp_path):
    doc = tiny_recipe(tmp_path, model={"name": "gcn", "options": {}}, data={"name": "dgraphfin", "root": str(tmp_path)})
    recipe = str(write_recipe(tmp_path / "r.yaml", doc))
    one_line_error(*run_cli(["train", recipe])[::2], "lacks dgraphfin.npz")
    (tmp_path / "dgraphfin.npz").write_bytes(b"PK\x03\x04 not really a zip")
    one_line_error(*run_cli(["train", recipe])[::2], "cannot read")
    assert set(DGRAPH_ARRAYS) >= {"x", "y", "edge_index", "train_mask", "valid_mask", "test_mask"}


def test_without_torch_geometric_a_graph_model_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_geometric.nn", None)  # as if the extra were not installed
    with pytest.raises(UserError, match=r"pip install 'biasbench\[graph\]'"):
        build_model("graphsage", num_classes=3, in_channels=16, input_shape=(16,))
    doc = tiny_recipe(tmp_path, model={"name": "gcn", "options": {}}, data={"name": "sbm_graph"})
    code, _, err = run_cli(["train", str(write_recipe(tmp_path / "r.yaml", doc))])
    one_line_error(code, err, "model `gcn` needs torch-geometric", "pip install 'biasbench[graph]'")


@pytest.mark.parametrize("model", ["gcn", "graphsage"])
def test_raa_is_the_hidden_activation_and_arr_reads_each_hidden_layers_aggregation(model):
    torch.manual_seed(0)
    net = build_model(model, "dnrt", num_classes=3, in_channels=16, input_shape=(16,), layers=3, hidden=8)
    assert [m.num_features for m in net.modules() if isinstance(m, RAA)] == [8, 8]
    g = sbm(30, 3, 16, 0.3, 0.05, 1.0, 0)
    batch = GraphBatch(g.x, g.edge_index, torch.tensor([4, 0, 7, 2]))
    (term,) = model_hooks(net).loss_terms.values()
    net.train()
    out = net(batch)
    assert out.shape == (4, 3)
    responses = term.tap.take()
    first = net.convs[0](g.x, g.edge_index)  # the first layer's aggregation, before RAA, at the batch's nodes
    torch.testing.assert_close(responses[0], first[batch.nodes])
    assert len(responses) == 2 and term.dims == [8, 8]


def test_training_a_gcn_writes_results_with_a_per_node_count(tmp_path):
    doc = tiny_recipe(tmp_path, model={"name": "gcn", "variant": "dnrt", "options": {"hidden": 16}},
                      data={"name": "sbm_graph"}, optim={"name": "adam", "lr": 0.01},
                      train={"epochs": 2, "batch_size": 1000, "eval_batch_size": 1000})
    code, out, err = run_cli(["train", str(write_recipe(tmp_path / "r.yaml", doc))])
    assert code == 0, err
    (path,) = (tmp_path / "runs").rglob("results.json")
    results = json.loads(path.read_text())
    assert results["data"]["nodes"] == 600 and results["data"]["train_size"] + results["data"]["val_size"] == 481
    # counted on one node of the graph's features (the graph kind's example), as `count` does
    assert results["complexity"]["input_shape"] == [16] and results["complexity"]["params"]["total"] > 0
    mm = results["complexity"]["flops_by_operator"]["aten::mm"]
    assert mm == 2 * (16 * 16 + 16 * 3)  # GCNConv's two weight products per node: 16 -> 16 -> 3
    assert len(results["history"]) == 2 and "test_acc" in results["final"]


@pytest.mark.parametrize("model, macs_per_product", [("gcn", 1), ("graphsage", 2)])
def test_count_counts_a_graph_model_on_one_node(model, macs_per_product):
    """A node's own cost: every layer's weight product (GraphSAGE: its root and neighbour
    weights; a node without edges aggregates nothing); with no edge no message is counted."""
    features, hidden, classes = 12, 8, 3
    code, out, err = run_cli(["count", "--model", model, "--features", str(features), "--option", f"hidden={hidden}",
                              "--num-classes", str(classes), "--json"])
    assert code == 0, err
    row = json.loads(out)["variants"]["baseline"]
    assert row["macs"] == macs_per_product * (features * hidden + hidden * classes)
    net = build_model(model, num_classes=classes, in_channels=features, input_shape=(features,), hidden=hidden)
    assert row["params"]["total"] == sum(p.numel() for p in net.parameters())
