"""Other libraries' models by name: `model.name: timm:NAME` and `model.name: torchvision:NAME`.

The model is built by its library without weights (nothing is downloaded; `pretrained: true` or
`weights:` are refused in one line), with the data's classes (`num_classes`) and, for timm, its
channels (`in_chans`); `model.options` go to the library's constructor (e.g. `img_size: 32` for
a timm ViT), except `taps`, the module names ARR reads (see `convert`). The variant is then
applied by `biasbench.models.convert`, which lists every activation it could not convert.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from biasbench.errors import UserError, did_you_mean
from biasbench.models.contract import ModelSpec
from biasbench.models.variants import Variant

LIBRARIES = ("timm", "torchvision")


def is_library_name(name: str) -> bool:
    return name.partition(":")[0] in LIBRARIES and ":" in name


def library_spec(name: str) -> ModelSpec:
    """What is known of `timm:NAME` / `torchvision:NAME` before building: it reads images.
    Which variants apply, only the conversion can tell (`convert`)."""
    _library_model(name)  # an unknown name fails here, with a suggestion
    return ModelSpec(name, _by_name_only, f"{name} without weights, converted by biasbench.models.convert",
                     "images", frozenset(), None)


def _by_name_only(**_: Any) -> nn.Module:
    raise UserError("library models are built with build_model(name, ...)")


def _library_model(name: str) -> tuple[str, str]:
    library, _, model = name.partition(":")
    known = _names(library)
    if model not in known:
        raise UserError(f"unknown {library} model `{model}`{did_you_mean(model, known)}; "
                        f"{library} has {len(known)} (e.g. {', '.join(sorted(known)[:3])})")
    return library, model


def _names(library: str) -> list[str]:
    if library == "timm":
        import timm

        return timm.list_models()
    import torchvision

    return torchvision.models.list_models(module=torchvision.models)


def build_library_model(name: str, variant: str | Variant, num_classes: int, in_channels: int,
                        input_shape: tuple[int, ...], variant_options: dict[str, Any] | None,
                        **options: Any) -> nn.Module:
    library, model = _library_model(name)
    taps = options.pop("taps", None)
    if options.get("pretrained") or options.get("weights") is not None:
        raise UserError(f"`{name}`: biasbench builds library models without weights and downloads nothing; "
                        "remove model.options.pretrained / weights")
    options.pop("pretrained", None)
    options.pop("weights", None)
    if library == "torchvision" and in_channels != 3:
        raise UserError(f"`{name}`: torchvision's models read 3 channels, the data has {in_channels}; "
                        "use timm:NAME (in_chans) or a 3-channel data set")
    try:
        if library == "timm":
            import timm

            net = timm.create_model(model, pretrained=False, num_classes=num_classes, in_chans=in_channels, **options)
        else:
            import torchvision

            net = torchvision.models.get_model(model, weights=None, num_classes=num_classes, **options)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        raise UserError(f"`{name}` cannot be built with model.options {options}: {str(e).splitlines()[0]}") from None
    shape = tuple(input_shape) if len(input_shape) == 3 else None  # None: timm's own input size
    return convert_model(net, variant, shape, taps, name, variant_options or {})


def convert_model(net: nn.Module, variant: str | Variant, input_shape: tuple[int, ...] | None, taps: Any, name: str,
                  variant_options: dict[str, Any]) -> nn.Module:
    from biasbench.models.convert import convert

    if taps is not None and (not isinstance(taps, list) or not all(isinstance(t, str) for t in taps)):
        raise UserError(f"`{name}`: model.options.taps must be a list of module names, got {taps!r}")
    if isinstance(variant, Variant):
        if variant_options:
            raise UserError("give variant options to build_variant, not with a Variant instance")
        return convert(net, variant, input_shape=input_shape, taps=taps, name=name)
    return convert(net, variant, input_shape=input_shape, taps=taps, name=name, **variant_options)
