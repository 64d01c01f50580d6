"""GCN and GraphSAGE for node classification (DNRT's Table 5), through torch-geometric.

    conv_1 -> act -> dropout -> ... -> conv_L          (L = `layers`; logits of the batch's nodes)

`gcn`: Kipf and Welling's GCNConv (symmetric normalisation, self-loops); `graphsage`: Hamilton et
al.'s SAGEConv (mean aggregation, root weight). Both read a `GraphBatch` (data/graph.py): the
whole graph, and the node ids whose logits they return. torch-geometric is the optional extra
`biasbench[graph]`; without it, asking for these models is one line saying how to install it.

DNRT's code has no GNN, so the placement is ours (docs/architectures.md):
- RAA replaces the hidden activation (`variant.act(hidden, dims=1)`: one shift per node,
  computed from the node's feature vector, as per token in a ViT); GELU by default, as DNRT's
  GELU rows, and any activation of the table through `model.variant_options.activation`.
- ARR reads each hidden layer's aggregated response, the conv's output before the activation
  (the neighbourhood aggregation is the "aggregated response" of a node, as a CNN stage's
  output is), one vector per node of the batch, with per-class running means over the
  training nodes as they come.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
from torch import nn

from biasbench.errors import UserError
from biasbench.models import register_model
from biasbench.models.contract import Taps
from biasbench.models.variants import Variant

if TYPE_CHECKING:
    from biasbench.data.graph import GraphBatch


def _geometric(model: str):
    try:
        with warnings.catch_warnings():  # its import calls torch.jit.script, which torch now deprecates
            warnings.simplefilter("ignore", FutureWarning)
            import torch_geometric.nn as geometric
    except ImportError:
        raise UserError(f"model `{model}` needs torch-geometric: pip install 'biasbench[graph]'") from None
    return geometric


def node_features(output: torch.Tensor) -> torch.Tensor:
    """A tapped (n, d) block of node features is already one vector per node."""
    return output


class NodeClassifier(nn.Module):
    def __init__(self, v: Variant, convs: list[nn.Module], hidden: int, dropout: float):
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.acts = nn.ModuleList(v.act(hidden, dims=1) for _ in convs[:-1])
        # Identity modules ARR's hooks read: each hidden layer's response at the batch's nodes.
        self.responses = nn.ModuleList(nn.Identity() for _ in convs[:-1])
        self.dropout = nn.Dropout(dropout)
        self.hidden = hidden

    def response_taps(self) -> Taps:
        return Taps(list(self.responses), [self.hidden] * len(self.responses), node_features)

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        h = batch.x
        for conv, act, response in zip(self.convs[:-1], self.acts, self.responses, strict=True):
            h = conv(h, batch.edge_index)
            response(h.index_select(0, batch.nodes))
            h = self.dropout(act(h))
        return self.convs[-1](h, batch.edge_index).index_select(0, batch.nodes)


def _widths(in_channels: int, num_classes: int, hidden: int, layers: int) -> list[tuple[int, int]]:
    if layers < 2 or hidden < 1:
        raise ValueError(f"need layers >= 2 (a hidden layer for RAA and ARR) and hidden >= 1, got {layers}, {hidden}")
    sizes = [in_channels] + [hidden] * (layers - 1) + [num_classes]
    return list(zip(sizes[:-1], sizes[1:]))


_GNN = dict(inputs="graphs", offers=("activations", "response_taps"), activation="gelu",
            taps=NodeClassifier.response_taps, tiny_options={"hidden": 8}, tiny_input=(5,))


@register_model("gcn", summary="GCN (Kipf & Welling): GCNConv layers, hidden 64, node classification", **_GNN)
def gcn(variant: Variant, num_classes: int, in_channels: int, input_shape: tuple[int, ...], hidden: int = 64,
        layers: int = 2, dropout: float = 0.5) -> nn.Module:
    geometric = _geometric("gcn")
    convs = [geometric.GCNConv(a, b) for a, b in _widths(in_channels, num_classes, hidden, layers)]
    return NodeClassifier(variant, convs, hidden, dropout)


@register_model("graphsage", summary="GraphSAGE (Hamilton et al.): mean-aggregating SAGEConv layers, hidden 64",
                **_GNN)
def graphsage(variant: Variant, num_classes: int, in_channels: int, input_shape: tuple[int, ...], hidden: int = 64,
              layers: int = 2, dropout: float = 0.5) -> nn.Module:
    geometric = _geometric("graphsage")
    convs = [geometric.SAGEConv(a, b, aggr="mean") for a, b in _widths(in_channels, num_classes, hidden, layers)]
    return NodeClassifier(variant, convs, hidden, dropout)
