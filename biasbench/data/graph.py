"""Graphs for node classification (DNRT's Table 5: GCN and GraphSAGE on DGraph-Fin).

How full-graph training fits the trainer, which batches (x, y): a split is a set of labelled
*nodes* of one graph (`GraphSplit`), and a batch is `(GraphBatch(x, edge_index, nodes), y)`: the
whole graph (every node's features, every edge) with the node ids whose predictions the loss
and the accuracy read, and their labels. A GNN runs over the whole graph and returns the
logits of `batch.nodes`. `train.batch_size` is the number of labelled nodes per step: at least
the training nodes, one step per epoch (full-batch training, as GCN is usually trained);
fewer, several full-graph steps per epoch over shuffled nodes (what ARR needs on a graph the
size of DGraph-Fin, its per-class means being updated sample by sample over a batch). Set
`train.eval_batch_size` to at least a split's nodes for one forward per evaluation. The graph
lives on the training device once; nothing else changes in the trainer.

Data sets:
- `sbm_graph` (bundled, generated): a stochastic block model, one block per class (edge
  probability `p_in` within a class, `p_out` across), node features a class centroid plus
  Gaussian noise (`noise`): by default the features alone give a linear classifier 58% (3
  classes), the mean over each node's neighbourhood 93%, so a GNN must use the edges. The
  test nodes are a fixed 20%; validation comes from the rest as `data.val_fraction` says.
- `dgraphfin`: the DGraph-Fin release (Huang et al. 2022, dgraph.xinye.com), `dgraphfin.npz` in
  `data.root`: x (N, 17), y (N,) (0 normal, 1 fraud; 2, 3 background nodes, never in a split),
  edge_index (E, 2), edge_type, edge_timestamp, and the node-id arrays train_mask, valid_mask,
  test_mask (boolean masks of length N are read too). Features are standardised per column.
  The release's own split is used: `data.val_fraction` does not apply (said in the results),
  `data.val_folds` is refused. The graph is used as released (directed, edge types and times
  not read), as in the DGraph paper's GCN / GraphSAGE baselines.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biasbench.data import INPUT_KINDS, DataBundle, DatasetInfo, Download, InputKind, Sizes, register_dataset
from biasbench.data.common import check_options, data_root, require_files
from biasbench.data.loader import epoch_generator
from biasbench.data.splits import fraction_split, validation_split
from biasbench.errors import UserError


@dataclass
class Graph:
    x: torch.Tensor  # (N, F) float node features
    edge_index: torch.Tensor  # (2, E) int64, source -> target
    y: torch.Tensor  # (N,) int64 labels (unlabelled nodes may carry any value; no split holds them)


@dataclass
class GraphSplit:
    """The labelled nodes of one split of `graph`."""

    graph: Graph
    nodes: torch.Tensor  # (n,) int64 node ids

    @property
    def y(self) -> torch.Tensor:
        return self.graph.y[self.nodes]

    def __len__(self) -> int:
        return len(self.nodes)

    def numbers(self) -> dict[str, torch.Tensor]:
        return {"node features": self.graph.x}

    def loader(self, cfg: Any, batch_size: int, device: torch.device, shuffle: bool = False,
               seed: int = 0) -> GraphLoader:
        """Node classification: the whole graph in every batch (the `KindSplit` seam)."""
        return graph_loader(self, cfg, batch_size, device, shuffle, seed)


@dataclass
class GraphBatch:
    """What a GNN reads: the whole graph, and the nodes whose logits it returns."""

    x: torch.Tensor
    edge_index: torch.Tensor
    nodes: torch.Tensor

    def __getitem__(self, part: slice) -> GraphBatch:
        """A share of the nodes (data-parallel ranks each take one), over the same graph."""
        return GraphBatch(self.x, self.edge_index, self.nodes[part])

    def __len__(self) -> int:
        return len(self.nodes)


def one_node_graph(input_shape: tuple[int, ...], device: torch.device | str, dtype: torch.dtype) -> GraphBatch:
    """What `count` runs a graph model on: one node of `input_shape` (F,) features, no edge, its
    logits read. Counted per node: what a node's own features cost; the messages of its
    neighbours add per edge, which a graph of its own would decide."""
    return GraphBatch(torch.zeros((1, *input_shape), device=device, dtype=dtype),
                      torch.zeros((2, 0), device=device, dtype=torch.int64),
                      torch.zeros(1, device=device, dtype=torch.int64))


INPUT_KINDS.register("graphs")(InputKind("graphs", one_node_graph))


class GraphLoader:
    """Batches (GraphBatch, labels) of a split's nodes; the graph is moved to `device` once."""

    def __init__(self, split: GraphSplit, batch_size: int, device: torch.device, shuffle: bool = False,
                 seed: int = 0):
        self.x = split.graph.x.to(device)
        self.edge_index = split.graph.edge_index.to(device)
        self.nodes = split.nodes.to(device)
        self.y = split.y.to(device)
        self.batch_size, self.device, self.shuffle, self.seed, self.epoch = batch_size, device, shuffle, seed, 0
        self._first, self._at = 0, 0

    def set_epoch(self, epoch: int, position: dict[str, Any] | None = None) -> None:
        self.epoch, self._first = epoch, int((position or {}).get("batch", 0))

    def position(self) -> dict[str, Any]:
        return {"batch": self._at}

    def __len__(self) -> int:
        return -(-len(self.y) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[GraphBatch, torch.Tensor]]:
        order = (torch.randperm(len(self.y), generator=epoch_generator(self.seed, self.epoch)).to(self.device)
                 if self.shuffle else torch.arange(len(self.y), device=self.device))
        first, self._first = self._first, 0  # a mid-epoch start applies to one pass
        for b in range(first, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            self._at = b + 1
            yield GraphBatch(self.x, self.edge_index, self.nodes[idx]), self.y[idx]


def graph_loader(split: GraphSplit, cfg: Any, batch_size: int, device: torch.device, shuffle: bool = False,
                 seed: int = 0) -> GraphLoader:
    if cfg.augment != "none":
        raise UserError(f"data set `{cfg.name}` is a graph: data.augment must be none, got {cfg.augment}")
    return GraphLoader(split, batch_size, device, shuffle, seed)


def _bundle(cfg: Any, graph: Graph, train: torch.Tensor, val: torch.Tensor | None, test: torch.Tensor,
            num_classes: int, info: dict[str, Any]) -> DataBundle:
    splits = [GraphSplit(graph, nodes) if nodes is not None and len(nodes) else None for nodes in (train, val, test)]
    return DataBundle(splits[0], splits[1], splits[2], "classification", num_classes,  # type: ignore[arg-type]
                      (graph.x.shape[1],), info={"nodes": len(graph.y), "edges": graph.edge_index.shape[1], **info})


# -- a stochastic block model -------------------------------------------------------------------
_SBM = {"nodes": 600, "classes": 3, "features": 16, "p_in": 0.05, "p_out": 0.005, "noise": 4.0, "seed": 0}


def sbm(nodes: int, classes: int, features: int, p_in: float, p_out: float, noise: float, seed: int) -> Graph:
    """Labels uniform over classes; an undirected edge between i != j with probability p_in
    (same class) or p_out; features = the class's centroid (unit normal) + noise * N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (nodes,), generator=g)
    same = y[:, None] == y[None, :]
    draw = torch.rand(nodes, nodes, generator=g)
    upper = torch.triu(draw < torch.where(same, p_in, p_out), diagonal=1)
    src, dst = upper.nonzero(as_tuple=True)
    edge_index = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
    centroids = torch.randn(classes, features, generator=g)
    x = centroids[y] + noise * torch.randn(nodes, features, generator=g)
    return Graph(x, edge_index, y)


def _sbm_shape(o: dict) -> tuple[tuple[int, ...], int]:
    return (int(o.get("features", _SBM["features"])),), int(o.get("classes", _SBM["classes"]))


@register_dataset("sbm_graph", DatasetInfo("a stochastic block model graph with class-dependent node features",
                                             bundled=True, kind="graphs", task="node classification",
                                             shape=_sbm_shape))
def sbm_graph(cfg: Any, replicate: int = 0) -> DataBundle:
    o = check_options("sbm_graph", cfg.options, _SBM)
    if int(o["nodes"]) < 10 or int(o["classes"]) < 2 or not 0 <= o["p_out"] <= 1 or not 0 <= o["p_in"] <= 1:
        raise UserError("data.options for sbm_graph: nodes >= 10, classes >= 2, p_in and p_out in [0, 1]")
    graph = sbm(int(o["nodes"]), int(o["classes"]), int(o["features"]), float(o["p_in"]), float(o["p_out"]),
                float(o["noise"]), int(o["seed"]))
    rest, test = fraction_split(graph.y, 0.2, 0)
    tr, va, split_info = validation_split(graph.y[rest], cfg, replicate)
    return _bundle(cfg, graph, rest[tr], rest[va], test, int(o["classes"]), {"source": "sbm", **o, **split_info})


# -- DGraph-Fin -----------------------------------------------------------------------------------
DGRAPH_FILE = "dgraphfin.npz"
DGRAPH_ARRAYS = ("x", "y", "edge_index", "edge_type", "edge_timestamp", "train_mask", "valid_mask", "test_mask")


def _nodes(array: np.ndarray, n: int, name: str, path: Path) -> torch.Tensor:
    """A split as node ids: the release stores id arrays; boolean masks of length N are read too."""
    if array.dtype == bool:
        if array.shape != (n,):
            raise UserError(f"`{path}`: {name} is a boolean mask of shape {array.shape}, expected ({n},)")
        return torch.from_numpy(np.flatnonzero(array)).long()
    ids = torch.from_numpy(np.asarray(array).reshape(-1).astype(np.int64))
    if len(ids) and (ids.min() < 0 or ids.max() >= n):
        raise UserError(f"`{path}`: {name} holds node ids outside 0..{n - 1}")
    return ids


def read_dgraphfin(path: Path) -> tuple[Graph, dict[str, torch.Tensor]]:
    try:
        with np.load(path) as f:
            missing = [a for a in DGRAPH_ARRAYS if a not in f.files]
            if missing:
                raise UserError(f"`{path}` is not a DGraph-Fin release file: it lacks the arrays "
                                f"{', '.join(missing)} (it needs {', '.join(DGRAPH_ARRAYS)})")
            arrays = {a: f[a] for a in ("x", "y", "edge_index", "train_mask", "valid_mask", "test_mask")}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"cannot read `{path}` as a .npz file ({type(e).__name__}: {e}); download it again") from None
    x, y, edges = arrays["x"], arrays["y"], arrays["edge_index"]
    n = len(y)
    if x.ndim != 2 or len(x) != n or edges.ndim != 2 or 2 not in edges.shape:
        raise UserError(f"`{path}`: expected x (N, F), y (N,) and edge_index (E, 2); got x {x.shape}, "
                        f"y {y.shape}, edge_index {edges.shape}")
    edge_index = torch.from_numpy(edges.astype(np.int64))
    edge_index = edge_index.t().contiguous() if edge_index.shape[1] == 2 and edge_index.shape[0] != 2 else edge_index
    if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= n):
        raise UserError(f"`{path}`: edge_index holds node ids outside 0..{n - 1}")
    features = torch.from_numpy(x.astype(np.float32))
    features = (features - features.mean(0)) / features.std(0).clamp_min(1e-12)
    splits = {name: _nodes(arrays[name], n, name, path) for name in ("train_mask", "valid_mask", "test_mask")}
    return Graph(features, edge_index, torch.from_numpy(y.astype(np.int64))), splits


def dgraphfin_sizes(cfg: Any) -> Sizes | None:
    """The release's train and test node arrays, counted in `dgraphfin.npz` where it is under
    data.root (no size is published with the release); None without it."""
    path = Path(cfg.root).expanduser() / DGRAPH_FILE if cfg.root else None
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path) as f:
            train, test = (f[a] for a in ("train_mask", "test_mask"))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
        return None  # training says what is wrong with the file; an estimate only lacks its size
    count = [int(a.sum()) if a.dtype == bool else a.size for a in (train, test)]
    return Sizes(count[0], count[1], carves_validation=False, exact=True)


@register_dataset("dgraphfin", DatasetInfo("DGraph-Fin (dgraphfin.npz): 3.7M users, 4.3M edges, fraud or not",
                                             bundled=False, kind="graphs", task="node classification",
                                             shape=lambda o: ((17,), 2), sizes=dgraphfin_sizes,
                                             download=Download("dgraph.xinye.com (after registering)")))
def dgraphfin(cfg: Any, replicate: int = 0) -> DataBundle:
    check_options("dgraphfin", cfg.options, {})
    if cfg.val_folds:
        raise UserError("dgraphfin has the release's validation split; data.val_folds does not apply: set it to 0")
    root = data_root(cfg, "dgraphfin", f"`{DGRAPH_FILE}` from dgraph.xinye.com")
    require_files(cfg, "dgraphfin", root, [DGRAPH_FILE])
    graph, splits = read_dgraphfin(root / DGRAPH_FILE)
    labelled = torch.cat(list(splits.values()))
    classes = int(graph.y[labelled].max()) + 1 if len(labelled) else 2
    return _bundle(cfg, graph, splits["train_mask"], splits["valid_mask"], splits["test_mask"], classes,
                   {"source": str(root / DGRAPH_FILE), "val_split": "the release's valid_mask "
                    "(data.val_fraction does not apply)", "features": "standardised per column"})
