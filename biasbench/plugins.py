"""Import every module of a package, so that adding a file is enough to register what it defines."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def import_submodules(package: ModuleType, suffix: str = "") -> None:
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name.startswith("_") or not info.name.endswith(suffix):
            continue
        importlib.import_module(f"{package.__name__}.{info.name}")
