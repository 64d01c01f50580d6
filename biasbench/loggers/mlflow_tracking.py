"""`mlflow`: one MLflow run per replicate, under a parent run per experiment (its replicates).

The tracking server is MLflow's own setting, `MLFLOW_TRACKING_URI` (a server, `sqlite:///...`
or a folder), the experiment `MLFLOW_EXPERIMENT_NAME` (default `biasbench`). Params are the
resolved recipe (dotted keys), metrics each epoch's history row at step = epoch, artifacts the
results file, metrics.csv and figures. Tags: name, seed, replicate and `output.tags` (a
study's cell and values). A resumed run continues its MLflow run (RUN/trackers.json).
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.request
from typing import Any

from biasbench.errors import UserError
from biasbench.loggers.base import RunInfo, TrackerIds, artifacts, numeric, register_logger
from biasbench.recipe import flatten

PARAM_LIMIT = 6000  # characters of one param value (MLflow's limit)
BATCH = 100  # params or tags per log_batch call (MLflow's limit)
STATUS = {"completed": "FINISHED", "diverged": "FAILED", "interrupted": "KILLED"}


def probe(uri: str, timeout: float = 5.0) -> None:
    """A tracking server that does not answer: one line now, instead of minutes of retries."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.URLError as e:  # wraps the socket error
        raise UserError(f"tracking server {uri} cannot be reached ({e.reason})") from None
    except OSError as e:
        raise UserError(f"tracking server {uri} cannot be reached ({e})") from None


def _chunks(items: list[Any]) -> list[list[Any]]:
    return [items[i:i + BATCH] for i in range(0, len(items), BATCH)]


@register_logger("mlflow", summary="MLflow tracking (MLFLOW_TRACKING_URI): parent run per experiment",
                 modules=("mlflow",), extra="mlflow", remote=True)
class MlflowRun:
    def __init__(self, info: RunInfo, ids: TrackerIds):
        import mlflow
        from mlflow.tracking import MlflowClient

        # MLflow retries a lost server for minutes by default; a tracker must not stall training
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        uri = mlflow.get_tracking_uri()
        probe(uri)
        self.client, self.info = MlflowClient(uri), info
        experiment = self._experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME") or "biasbench")
        tags = {"biasbench.name": info.name, **{f"biasbench.{k}": v for k, v in info.tags.items()}}
        self.parent = self._parent(experiment, tags)
        self.run_id = ids.get("mlflow")
        if self.run_id is not None and info.start_epoch:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        run = self.client.create_run(experiment, run_name=f"{info.name}/seed{info.seed}", tags={
            "mlflow.parentRunId": self.parent, **tags, "biasbench.seed": str(info.seed),
            "biasbench.replicate": str(info.replicate), "biasbench.folder": str(info.folder.resolve())})
        self.run_id = run.info.run_id
        ids.set("mlflow", self.run_id)
        self._params(self.run_id)

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # created meanwhile by another replicate's process
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def _parent(self, experiment: str, tags: dict[str, str]) -> str:
        """The experiment's parent run, found by its folder (hashed: filter strings have no
        escapes) or created: replicates trained in other processes find the same one."""
        group = hashlib.sha1(self.info.group.encode()).hexdigest()
        found = self.client.search_runs([experiment], f"tags.`biasbench.group` = '{group}' and "
                                        "tags.`biasbench.parent` = 'true'", max_results=1,
                                        order_by=["attributes.start_time ASC"])
        if found:
            return found[0].info.run_id
        run = self.client.create_run(experiment, run_name=self.info.name, tags={
            **tags, "biasbench.group": group, "biasbench.parent": "true", "biasbench.folder": self.info.group})
        self._params(run.info.run_id, parent=True)
        return run.info.run_id

    def _params(self, run_id: str, parent: bool = False) -> None:
        from mlflow.entities import Param

        flat = flatten(self.info.recipe)
        if parent:  # what the replicates share
            flat = {k: v for k, v in flat.items() if k not in ("train.seed",)}
        params = [Param(k, str(v)[:PARAM_LIMIT]) for k, v in sorted(flat.items())]
        for chunk in _chunks(params):
            self.client.log_batch(run_id, params=chunk)

    def epoch(self, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, int(row["epoch"])) for k, v in numeric(row).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, doc: dict[str, Any]) -> None:
        for path in artifacts(self.info.folder):
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, STATUS.get(doc.get("status", ""), "FINISHED"))
        self.client.set_terminated(self.parent, "FINISHED")  # each replicate's end closes it again
        self.run_id = None

    def close(self) -> None:
        if self.run_id is not None:  # ended without results (an error): do not leave it RUNNING
            self.client.set_terminated(self.run_id, "FAILED")
