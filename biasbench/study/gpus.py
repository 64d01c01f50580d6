"""`sweep --backend local --gpus 0,1,2,3|all [--workers-per-gpu K]`: which device each worker sees.

Each worker place gets `CUDA_VISIBLE_DEVICES` naming one device, so a run in it trains on
`cuda:0` = that device and never touches another. The places go round the devices first (the
first N workers each get their own GPU), then again for the second worker per GPU. Device
numbers are those torch sees in this process: when this process already runs under
`CUDA_VISIBLE_DEVICES=2,3`, `--gpus 0` is physical device 2 and the worker is told so.
"""

from __future__ import annotations

import os

from biasbench.errors import UserError

VARIABLE = "CUDA_VISIBLE_DEVICES"


def visible_devices() -> int:
    """How many CUDA devices torch sees here (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def parse_gpus(spec: str, visible: int) -> list[int]:
    """`all` or a comma-separated list of distinct device numbers below `visible`."""
    if spec.strip() == "all":
        if visible == 0:
            raise UserError("--gpus all: torch sees no CUDA device here; run without --gpus (CPU workers)")
        return list(range(visible))
    parts = [p.strip() for p in spec.split(",")]
    if not all(p.isdigit() for p in parts):
        raise UserError(f"--gpus must be `all` or device numbers separated by commas, e.g. 0,1,2,3; got `{spec}`")
    devices = [int(p) for p in parts]
    if len(set(devices)) != len(devices):
        raise UserError(f"--gpus `{spec}` names a device twice; for several workers on one GPU use "
                        "--workers-per-gpu K")
    if wrong := [d for d in devices if d >= visible]:
        seen = f"devices 0..{visible - 1}" if visible else "no CUDA device"
        raise UserError(f"--gpus `{spec}`: device {wrong[0]} does not exist; torch sees {seen} here")
    return devices


def gpu_slots(devices: list[int], per_gpu: int, inherited: str | None = None) -> list[dict[str, str]]:
    """One environment per worker: round-robin over `devices`, `per_gpu` rounds. `inherited`:
    this process's own CUDA_VISIBLE_DEVICES, through which device numbers are translated."""
    names = [n.strip() for n in inherited.split(",")] if inherited else None
    ids = [names[d] if names else str(d) for d in devices]
    return [{VARIABLE: device} for _ in range(per_gpu) for device in ids]


def slots_for(spec: str, per_gpu: int) -> list[dict[str, str]]:
    return gpu_slots(parse_gpus(spec, visible_devices()), per_gpu, os.environ.get(VARIABLE))
