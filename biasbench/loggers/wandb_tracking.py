"""`wandb`: one W&B run per replicate, grouped by experiment (W&B's `group`).

W&B's own settings apply: `WANDB_PROJECT` (default `biasbench`), `WANDB_ENTITY`, `WANDB_MODE`
(`offline` writes RUN/wandb/ for a later `wandb sync`). Config is the resolved recipe, each
epoch's history row is logged at step = epoch, the results file, metrics.csv and figures are an
artifact of type `results`; tags are `output.tags` as KEY=VALUE (a study's cell and values).
A resumed run continues its W&B run (RUN/trackers.json).
"""

from __future__ import annotations

import os
from typing import Any

from biasbench.loggers.base import RunInfo, TrackerIds, artifacts, numeric, register_logger

TAG_LIMIT = 64  # characters of a W&B tag


@register_logger("wandb", summary="Weights & Biases (WANDB_PROJECT, WANDB_MODE): group per experiment",
                 modules=("wandb",), extra="wandb", remote=True)
class WandbRun:
    def __init__(self, info: RunInfo, ids: TrackerIds):
        import wandb

        self.info = info
        run_id = ids.get("wandb") if info.start_epoch else None
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or "biasbench", group=info.name, job_type="train",
            name=f"{info.name}/seed{info.seed}", config=info.recipe, dir=str(info.folder),
            tags=[f"{k}={v}"[:TAG_LIMIT] for k, v in info.tags.items()],
            id=run_id, resume="allow" if run_id else None, reinit="create_new",
            settings=wandb.Settings(silent=True, init_timeout=30, console="off"))
        self.run.config.update({"seed": info.seed, "replicate": info.replicate}, allow_val_change=True)
        ids.set("wandb", self.run.id)
        self.done = False

    def epoch(self, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
        self.run.log(numeric(row), step=int(row["epoch"]))

    def finish(self, doc: dict[str, Any]) -> None:
        import wandb

        files = artifacts(self.info.folder)
        if files:
            artifact = wandb.Artifact(f"results-{self.run.id}", type="results")
            for path in files:
                artifact.add_file(str(path))
            self.run.log_artifact(artifact)
        self.run.summary["status"] = doc.get("status")
        self.run.finish(exit_code=0 if doc.get("status") == "completed" else 1)
        self.done = True

    def close(self) -> None:
        if not self.done:
            self.run.finish(exit_code=1)
