"""TNT-Small, PVT-Tiny and DeiT-Tiny as the DNRT authors' framework builds them (issue 21).

The pinned counts come from running the authors' code (horrible-dong/QTClassification):
`qtcls/models/tnt.py` at f908d01~1 (`tnt_s_patch4_32`: TNT(img_size=32, patch_size=4,
embed_dim=384, in_dim=24, depth=12, num_heads=6, in_num_head=4, qkv_bias=False), first_stride 4),
`qtcls/models/pvt.py` (`pvt_tiny`, PyramidVisionTransformer with img_size 224 as written, and
the same with img_size=32), `qtcls/models/deit.py` (VisionTransformerDistilled(img_size=32,
patch_size=4, embed_dim=192, depth=12, num_heads=3)); DNRT adds RAA's w (hidden) + b (1) in every
MLP (horrible-dong/DNRT `qtcls/modules/DNRT/raa.py`, `RAA(num_features)`). ReLU has no
parameters, so its counts are GELU's. Their state dicts load strictly into these models (TNT,
DeiT; PVT after renaming its keys) with outputs equal to 1e-14 in float64 (checked beside their
code, which is not part of this repository).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from biasbench.layers.raa import RAA
from biasbench.models import build_model
from biasbench.recipe import load_recipe
from tests.test_archs import n_params, on_meta

AUTHORS = {  # (model, options) -> {classes: (GELU or ReLU, DNRT)}
    ("tnt_small_patch4", ()): {10: (21_525_298, 21_544_906), 100: (21_559_948, 21_579_556)},
    ("pvt_tiny", ()): {10: (12_340_490, 12_350_226), 100: (12_386_660, 12_396_396)},
    ("pvt_tiny", (("pos_embed_side", 224),)): {10: (12_721_418, 12_731_154), 100: (12_767_588, 12_777_324)},
    ("deit_tiny_patch4", (("distilled", True),)): {10: (5_365_076, 5_374_304), 100: (5_399_816, 5_409_044)},
}


@pytest.mark.parametrize("model,options", sorted(AUTHORS))
@pytest.mark.parametrize("classes", [10, 100])
def test_parameter_counts_equal_the_authors_code(model, options, classes):
    plain, dnrt = AUTHORS[model, options][classes]
    for variant, activation, expected in [("baseline", "gelu", plain), ("baseline", "relu", plain),
                                          ("dnrt", "gelu", dnrt)]:
        net = on_meta(build_model, model, variant, num_classes=classes, input_shape=(3, 32, 32),
                      variant_options={"activation": activation}, **dict(options))
        assert n_params(net) == expected, (model, options, classes, variant, activation)


def test_tnt_is_the_legacy_block_with_one_inner_pixel_per_patch():
    net = on_meta(build_model, "tnt_small_patch4", num_classes=10, input_shape=(3, 32, 32))
    block = net.blocks[0]
    assert block.norm1_proj.normalized_shape == (24,) and block.norm2_proj is None
    assert block.proj.bias is not None and block.proj.in_features == 24  # one pixel of 24 values
    assert net.pixel_embed.proj.stride == (4, 4) and net.pixel_pos.shape == (1, 24, 1, 1)
    strided_1 = on_meta(build_model, "tnt_small_patch4", num_classes=10, input_shape=(3, 32, 32), pixel_stride=1)
    assert strided_1.blocks[0].proj.in_features == 16 * 24


def test_pvt_is_v1_with_spatial_reduction_and_position_embeddings():
    net = on_meta(build_model, "pvt_tiny", "raa", num_classes=10, input_shape=(3, 32, 32))
    grids = [s.pos_embed.shape[1] for s in net.stages]
    assert grids == [64, 16, 4, 1 + 1]  # 8x8, 4x4, 2x2, 1x1 + the class token
    assert [s.proj.kernel_size for s in net.stages] == [(4, 4), (2, 2), (2, 2), (2, 2)]
    sr = [b.attn.sr.kernel_size for s in net.stages[:3] for b in s.blocks]
    assert sr == [(8, 8)] * 2 + [(4, 4)] * 2 + [(2, 2)] * 2
    hidden = sorted(m.num_features for m in net.modules() if isinstance(m, RAA))
    assert hidden == [512] * 2 + [1024] * 2 + [1280] * 2 + [2048] * 2


def test_pvt_built_at_224_interpolates_its_position_embeddings_bilinearly():
    """The same weights, with the 224-px embeddings resized by hand, give the same outputs."""
    torch.manual_seed(0)
    options = dict(dims=[8, 8, 16, 16], depths=[1, 1, 1, 1], heads=[1, 1, 2, 2], drop_path=0.0)
    big = build_model("pvt_tiny", num_classes=3, input_shape=(3, 32, 32), pos_embed_side=224, **options).eval()
    small = build_model("pvt_tiny", num_classes=3, input_shape=(3, 32, 32), **options).eval()
    state = big.state_dict()
    for i, (stage, side) in enumerate(zip(big.stages, [8, 4, 2, 1])):
        pos = stage.pos_embed.detach()
        first = 1 if i == 3 else 0
        grid = pos[:, first:].reshape(1, stage.grid, stage.grid, -1).permute(0, 3, 1, 2)
        resized = F.interpolate(grid, size=(side, side), mode="bilinear").flatten(2).transpose(1, 2)
        state[f"stages.{i}.pos_embed"] = torch.cat((pos[:, :first], resized), dim=1)
    small.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(big(x), small(x), atol=1e-6)
    assert not torch.allclose(big(x), build_model("pvt_tiny", num_classes=3, input_shape=(3, 32, 32),
                                                  **options).eval()(x), atol=1e-3)


@pytest.mark.parametrize("name,expected", [("deit_tiny_gelu", 5_365_076), ("deit_tiny_dnrt", 5_374_304),
                                           ("pvt_tiny_gelu", 12_721_418), ("pvt_tiny_dnrt", 12_731_154),
                                           ("tnt_small_gelu", 21_525_298), ("tnt_small_dnrt", 21_544_906)])
def test_the_dnrt_recipes_build_what_the_authors_ran(name, expected):
    recipe = load_recipe(f"recipes/dnrt/cifar10/{name}.yaml")
    m = recipe.model
    net = on_meta(build_model, m.name, m.variant, num_classes=10, input_shape=(3, 32, 32),
                  variant_options=m.variant_options, **m.options)
    assert n_params(net) == expected


def test_tnt_refuses_a_pixel_stride_that_does_not_tile_its_patches_in_one_line():
    from biasbench.errors import UserError

    for stride, words in [(3, "one must divide the other"), (8, "does not tile")]:
        with pytest.raises(UserError) as e:
            build_model("tnt_small_patch4", num_classes=10, input_shape=(3, 32, 32), pixel_stride=stride)
        assert words in str(e.value) and "\n" not in str(e.value)
