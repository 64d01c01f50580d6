"""Readable, stable folder names from the keys that vary: `depth=8,shape=pyramidal,variant=dac`.

`cell_name` differs from `biasbench.runfolder.run_tag` (the folder of a `train --set` run) on
purpose: a study's keys may be labels that are no recipe keys (`arm`, `dataset`), they keep the
study file's order so a grid reads as written, and values read as a person wrote them
(2.0 -> `2`, a base recipe's path -> its stem).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-]+")
MAX_NAME = 200  # file systems allow 255 bytes per name; leave room for temporary-file prefixes


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each dotted key's shortest suffix that no other key ends with (`model.options.width` ->
    `width`, unless another key also ends with `width`)."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(k != key and (k == suffix or k.endswith("." + suffix)) for k in keys):
                out[key] = suffix
                break
        else:
            out[key] = key
    return out


def tag_value(value: Any) -> str:
    """A value as it reads in a folder name: yes/no words stay words, paths become their stem."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "-".join(tag_value(v) for v in value)
    if isinstance(value, dict):
        return "-".join(f"{k}{tag_value(v)}" for k, v in value.items())
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value)) if value != 0 else "0"
    text = str(value)
    if "/" in text and text.endswith((".yaml", ".yml")):
        text = Path(text).stem
    return _UNSAFE.sub("_", text).strip("_") or "_"


def cell_name(overrides: Mapping[str, Any]) -> str:
    """`{"model.options.depth": 8, "model.variant": "dac"}` -> `depth=8,variant=dac`.

    Keys keep their order (the study file's); each is shortened to its shortest unambiguous
    suffix. An empty mapping gives `default`."""
    if not overrides:
        return "default"
    short = short_keys(list(overrides))
    return ",".join(f"{_UNSAFE.sub('_', short[k])}={tag_value(v)}" for k, v in overrides.items())


def cell_names(points: list[Mapping[str, Any]], naming: list[str]) -> list[str]:
    """`cell_name` of each point's `naming` keys, the short keys worked out once for all of them
    (a 100,000-cell study is named in about a second)."""
    if not naming:
        return ["default"] * len(points)
    short = short_keys(naming)
    tags: dict[tuple[str, int], str] = {}  # by value identity: points share their grid's value objects

    def part(key: str, value: Any) -> str:
        got = tags.get((key, id(value)))
        if got is None:
            got = tags[key, id(value)] = f"{_UNSAFE.sub('_', short[key])}={tag_value(value)}"
        return got

    return [",".join([part(k, values[k]) for k in naming]) for values in points]  # (the table dies here)
