"""What `biasbench list` shows, read from the registries, and a cache of it that needs no torch.

The live catalog imports the registries (models, variants, data sets, activations), which import
torch: about 2 s on a warm disk, for a command that prints text. So the catalog is also kept as
JSON in the user cache folder (`$BIASBENCH_CACHE_DIR`, default `~/.cache/biasbench`), keyed on
biasbench's version, the Python version and the path, size and modification time of every
`.py` file of the package. A model file dropped into `biasbench/models/` (or any edit to a
registry or to this file) changes the key, so the next `list` reads the registries again and
rewrites the cache atomically; so does a missing, unreadable or corrupt cache file. Adding a
model stays one new file, no edit elsewhere.

In a process that has already imported the registries (the Python API, the tests), the live
catalog costs nothing more and also sees models registered at run time, so it is used there.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import biasbench
from biasbench.errors import UserError
from biasbench.fsutil import atomic_write_json

KINDS = ("models", "variants", "datasets", "activations")
PACKAGE_ROOT = Path(biasbench.__file__).resolve().parent
CACHE_FORMAT = 1
# Imported by the live catalog; when all are loaded, reading the registries is free.
_REGISTRY_MODULES = ("biasbench.models", "biasbench.data", "biasbench.layers.activations")

Catalog = dict[str, Any]  # {"docs": {kind: [entry]}, "options_text": {kind: {name: text}}}


def catalog(*, use_cache: bool | None = None) -> Catalog:
    """The catalog: from the cache when it is fresh, else from the registries (then cached).
    `use_cache=None`: use the cache unless this process has imported the registries already."""
    if use_cache is None:
        use_cache = not all(m in sys.modules for m in _REGISTRY_MODULES)
    if not use_cache:
        return live_catalog()
    key = catalog_key()
    path = cache_path()
    cached = read_cached(path, key)
    if cached is not None:
        return cached
    fresh = live_catalog()
    try:
        atomic_write_json(path, {"format": CACHE_FORMAT, "key": key, "catalog": fresh})
    except UserError:  # an unwritable cache folder costs speed only: the listing is right
        pass
    return fresh


def cache_path() -> Path:
    root = os.environ.get("BIASBENCH_CACHE_DIR") or Path.home() / ".cache" / "biasbench"
    return Path(root).expanduser() / "list-catalog.json"


def catalog_key() -> str:
    """Changes whenever a file that can register or describe something changes."""
    h = hashlib.sha256(f"{CACHE_FORMAT}\0{biasbench.__version__}\0{sys.version}\0{PACKAGE_ROOT}".encode())
    for rel, size, mtime in sorted(_source_files(PACKAGE_ROOT)):
        h.update(f"\0{rel}\0{size}\0{mtime}".encode())
    return h.hexdigest()


def _source_files(root: Path) -> list[tuple[str, int, int]]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                st = os.stat(os.path.join(folder, name))
                found.append((os.path.relpath(os.path.join(folder, name), root), st.st_size, st.st_mtime_ns))
    return found


def read_cached(path: Path, key: str) -> Catalog | None:
    """The cached catalog when the file holds one for `key`; None when it is missing, stale or
    not a catalog (a truncated or hand-edited file is read again from the registries)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != CACHE_FORMAT or doc.get("key") != key:
        return None
    found = doc.get("catalog")
    return found if _well_formed(found) else None


def _well_formed(found: Any) -> bool:
    if not isinstance(found, dict) or not isinstance(found.get("docs"), dict) \
            or not isinstance(found.get("options_text"), dict):
        return False
    docs = found["docs"]
    return all(isinstance(docs.get(k), list) and all(isinstance(e, dict) and isinstance(e.get("name"), str)
                                                     for e in docs[k]) for k in KINDS) \
        and all(isinstance(found["options_text"].get(k), dict) for k in ("models", "variants"))


def live_catalog() -> Catalog:
    """Read from the registries. The docs are what `list --json` prints (so JSON types: tuples
    become lists); `options_text` keeps each option default as Python writes it, for the tables."""
    raw = {"models": models_doc(), "variants": variants_doc(), "datasets": datasets_doc(),
           "activations": activations_doc()}
    options_text = {k: {e["name"]: options_line(e["options"]) for e in raw[k]} for k in ("models", "variants")}
    return {"docs": json.loads(json.dumps(raw, default=str)), "options_text": options_text}


def options_line(defaults: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in defaults.items()) or "none"


def models_doc() -> list[dict[str, Any]]:
    from biasbench.models import applicability, list_models, model_options, model_spec

    out = []
    for name in list_models():
        spec = model_spec(name)
        out.append({"name": name, "summary": spec.summary, "reads": spec.inputs, "activation": spec.activation,
                    "offers": sorted(spec.offers), "options": model_options(name), "variants": applicability(name)})
    return out


def variants_doc() -> list[dict[str, Any]]:
    from biasbench.layers.activations import ACTIVATIONS
    from biasbench.models import list_variants
    from biasbench.models.variants import VARIANTS, variant_options

    out = []
    for name in baseline_first(list_variants()):
        cls = VARIANTS.get(name)
        out.append({"name": name, "summary": cls.summary, "needs": sorted(cls.requires),
                    "activations": list(cls.activations or ACTIVATIONS), "options": variant_options(cls),
                    "renamed_options": dict(cls.renamed_options)})
    return out


def datasets_doc() -> list[dict[str, Any]]:
    from biasbench.data import dataset_info, list_datasets

    out = []
    for name in list_datasets():
        info = dataset_info(name)
        shape = info.shape({})
        out.append({"name": name, "summary": info.summary, "task": info.task, "bundled": info.bundled,
                    "input_shape": list(shape[0]) if shape else None, "outputs": shape[1] if shape else None})
    return out


def activations_doc() -> list[dict[str, Any]]:
    from biasbench.layers.activations import ACTIVATIONS
    from biasbench.models import list_variants
    from biasbench.models.variants import VARIANTS

    refused_by = {a: [v for v in baseline_first(list_variants()) if VARIANTS.get(v).activations is not None
                      and a not in VARIANTS.get(v).activations] for a in ACTIVATIONS}
    return [{"name": a.name, "formula": a.formula, "elementwise": a.elementwise is not None,
             "variants_without": refused_by[a.name]} for a in ACTIVATIONS.values()]


def baseline_first(variants: list[str]) -> list[str]:
    return ["baseline"] + [v for v in variants if v != "baseline"]
