"""output.loggers: the recipe key, csv, MLflow (a local store, and a real tracking server),
W&B offline (its run file read back), an unreachable tracker, study tags."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import typing
from pathlib import Path
from typing import Any

import pytest

from biasbench.loggers import LOGGERS
from biasbench.recipe import OutputConfig, flatten, from_dict, load_recipe
from tests.conftest import one_line_error, run_cli, tiny_recipe, write_recipe

ROOT = Path(__file__).resolve().parents[1]


def train(tmp_path: Path, loggers: list[str], *args: str, **output: Any) -> tuple[int, str, str, Path]:
    doc = tiny_recipe(tmp_path, train={"epochs": 3, "replicates": 2},
                      output={"loggers": loggers, "name": "tiny", **output})
    path = write_recipe(tmp_path / "tiny.yaml", doc)
    code, out, err = run_cli(["train", str(path), "--device", "cpu", "--quiet", *args])
    return code, out, err, tmp_path / "runs" / "tiny"


def results(folder: Path) -> dict[int, dict[str, Any]]:
    docs = [json.loads(p.read_text()) for p in sorted(folder.glob("seed*/results.json"))]
    return {d["seed"]: d for d in docs}


# ---------------------------------------------------------------------------------------------
# The recipe key.
# ---------------------------------------------------------------------------------------------


def test_logger_names_in_the_schema_are_the_registered_ones() -> None:
    (arg,) = typing.get_args(typing.get_type_hints(OutputConfig)["loggers"])
    assert sorted(typing.get_args(arg)) == LOGGERS.names() == ["csv", "mlflow", "tensorboard", "wandb"]
    assert OutputConfig().loggers == ["csv"]


def test_old_tensorboard_key_is_refused_with_the_new_spelling(tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, output={"tensorboard": True}))
    one_line_error(*run_cli(["train", str(path)])[::2], "output.tensorboard", "output.loggers: [csv, tensorboard]")
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    one_line_error(*run_cli(["train", str(path), "--set", "output.tensorboard=true"])[::2],
                   "output.loggers: [csv, tensorboard]")
    # results and checkpoints written before output.loggers record `tensorboard: false`: still read
    old = json.loads((ROOT / "tests/reference/quickstart_smoke/seed0/results.json").read_text())["recipe"]
    assert old["output"]["tensorboard"] is False and from_dict(old).output.loggers == ["csv"]


@pytest.mark.parametrize(("output", "words"), [
    ({"loggers": ["csvv"]}, ["output.loggers[0]", "csv"]),
    ({"loggers": "csv"}, ["output.loggers", "must be a list"]),
    ({"loggers": ["csv", "csv"]}, ["output.loggers", "twice"]),
    ({"tags": {"cell": 3}}, ["output.tags", "strings"]),
])
def test_bad_loggers_and_tags_are_one_line(tmp_path: Path, output: dict[str, Any], words: list[str]) -> None:
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, output=output))
    one_line_error(*run_cli(["train", str(path)])[::2], *words)


def test_recipe_show_lists_loggers_and_tags(tmp_path: Path) -> None:
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, output={"loggers": ["csv", "mlflow"],
                                                                           "tags": {"owner": "lab"}}))
    code, out, _ = run_cli(["recipe", "show", str(path)])
    assert code == 0
    assert "  loggers: [csv, mlflow]" in out.splitlines() and "  tags: {owner: lab}" in out.splitlines()


def test_missing_tracker_package_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_wandb(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "wandb" or name.startswith("wandb."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path, output={"loggers": ["wandb"]}))
    one_line_error(*run_cli(["train", str(path)])[::2], "pip install 'biasbench[wandb]'")
    assert not (tmp_path / "runs").exists()


def test_without_csv_no_metrics_csv(tmp_path: Path) -> None:
    code, _, err, folder = train(tmp_path, [], "--replicates", "1")
    assert code == 0, err
    assert (folder / "seed0/results.json").exists() and not (folder / "seed0/metrics.csv").exists()


# ---------------------------------------------------------------------------------------------
# MLflow.
# ---------------------------------------------------------------------------------------------


def read_mlflow(uri: str, experiment: str = "biasbench") -> tuple[Any, Any, list[Any]]:
    """(client, parent run, child runs by seed order) of the one experiment group logged."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("biasbench.parent") == "true"]
    children = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
                      key=lambda r: int(r.data.tags["biasbench.seed"]))
    return client, parent, children


def check_mlflow_run(client: Any, run: Any, doc: dict[str, Any], tmp_path: Path) -> None:
    """Params = the resolved recipe; metrics per epoch = the history; results.json an artifact."""
    flat = {k: str(v) for k, v in flatten(doc["recipe"]).items()}
    assert run.data.params == flat
    for key in ("test_acc", "train_loss", "lr"):
        logged = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in logged] == [h["epoch"] for h in doc["history"]]
        assert [m.value for m in logged] == pytest.approx([h[key] for h in doc["history"]])
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "metrics.csv"} <= names
    got = client.download_artifacts(run.info.run_id, "results.json", str(tmp_path))
    assert json.loads(Path(got).read_text()) == doc
    assert run.info.status == "FINISHED"


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One local SQLite store for the module (creating its tables is most of MLflow's start-up
    time); each test logs to its own experiment, made here with its artifacts in the temporary
    folder (MLflow's default is ./mlruns in the working directory)."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    for experiment in ("local", "resume"):
        client.create_experiment(experiment, artifact_location=(folder / experiment).as_uri())
    return uri


def test_mlflow_local_store_parent_run_params_metrics_artifacts(mlflow_store: str, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "local")
    code, _, err, folder = train(tmp_path, ["csv", "mlflow"], tags={"cell": "dac_w8"})
    assert code == 0 and "warning" not in err, err
    docs = results(folder)
    client, parent, children = read_mlflow(mlflow_store, "local")
    assert parent.info.run_name == "tiny" and parent.data.tags["biasbench.cell"] == "dac_w8"
    assert [c.info.run_name for c in children] == ["tiny/seed0", "tiny/seed1"]
    for child, seed in zip(children, (0, 1), strict=True):
        assert child.data.tags["biasbench.cell"] == "dac_w8" and child.data.tags["biasbench.replicate"] == str(seed)
        check_mlflow_run(client, child, docs[seed], tmp_path / f"dl{seed}")


def test_mlflow_resume_continues_the_same_run(mlflow_store: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    uri = mlflow_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "resume")
    code, _, err, folder = train(tmp_path, ["mlflow"], "--stop-after", "1")
    assert code == 0, err
    code, _, err, folder = train(tmp_path, ["mlflow"], "--resume")
    assert code == 0, err
    client, _, children = read_mlflow(uri, "resume")
    assert len(children) == 2  # one MLflow run per replicate, not one per start
    for child in children:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "test_acc")] == [1, 2, 3]
        assert child.info.status == "FINISHED"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_tracker_is_one_warning_and_training_goes_on(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nobody listens
    code, _, err, folder = train(tmp_path, ["csv", "mlflow"])
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.strip()]
    assert len(warnings) == 2 and all(w.startswith("warning: mlflow: tracking server") for w in warnings)
    assert all("training goes on" in w for w in warnings)  # one line per replicate, each trained
    assert [d["status"] for d in results(folder).values()] == ["completed", "completed"]
    assert (folder / "seed1/metrics.csv").exists()


@pytest.fixture()
def mlflow_server(tmp_path: Path) -> Any:
    """`mlflow server` on 127.0.0.1 with an SQLite backend, in its own process group (its job
    workers too), killed at the end."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_SERVER_JOB_ENABLE_PERIODIC_TASKS": "false"}
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--default-artifact-root", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        from urllib.request import urlopen

        deadline = time.monotonic() + 180
        while True:
            try:
                urlopen(uri + "/health", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
                assert time.monotonic() < deadline, "mlflow server did not start in 180 s"
                time.sleep(1)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.slow  # the server alone takes ~45 s to start on a loaded 2-core machine
def test_mlflow_server_quickstart_smoke(mlflow_server: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "quickstart")
    code, _, err = run_cli(["train", str(ROOT / "recipes/quickstart.yaml"), "--smoke", "--replicates", "2",
                            "--out", str(tmp_path / "runs"), "--device", "cpu", "--quiet",
                            "--set", "output.loggers=[csv, mlflow]", "--set", "output.checkpoint=false"])
    assert code == 0 and "warning" not in err, err
    docs = results(tmp_path / "runs" / "quickstart_smoke")
    client, parent, children = read_mlflow(mlflow_server, "quickstart")
    assert parent.info.run_name == "quickstart_smoke" and len(children) == 2
    for child, seed in zip(children, (0, 1), strict=True):
        check_mlflow_run(client, child, docs[seed], tmp_path / f"dl{seed}")
    recipe = load_recipe(ROOT / "recipes/quickstart.yaml", smoke=True)
    assert children[0].data.params["train.epochs"] == str(recipe.train.epochs)


# ---------------------------------------------------------------------------------------------
# W&B, offline: the run file (a LevelDB-style log of protobuf records) read back.
# ---------------------------------------------------------------------------------------------


def wandb_records(path: Path) -> list[Any]:
    """The records of a .wandb file: a 7-byte header, then 32 KiB blocks of chunks (CRC32, length,
    type: full/first/middle/last), as W&B's datastore writes them."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pos, block, pending = [], 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # too little room for a chunk header: padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending += chunk
        if kind in (1, 4):  # full or last
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def test_wandb_offline_run_files_hold_config_history_group_and_artifact(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    code, _, err, folder = train(tmp_path, ["csv", "wandb"], tags={"cell": "dac_w8"})
    assert code == 0 and "warning" not in err, err
    docs = results(folder)
    for seed, doc in docs.items():
        ids = json.loads((folder / f"seed{seed}/trackers.json").read_text())
        (run_file,) = (folder / f"seed{seed}/wandb").glob(f"offline-run-*-{ids['wandb']}/run-*.wandb")
        records = wandb_records(run_file)
        (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert run.run_group == "tiny" and run.display_name == f"tiny/seed{seed}" and list(run.tags) == ["cell=dac_w8"]
        config = {}
        for r in records:
            if r.WhichOneof("record_type") in ("run", "config"):
                items = r.run.config.update if r.WhichOneof("record_type") == "run" else r.config.update
                config.update({i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in items})
        assert {k: v for k, v in config.items() if k in doc["recipe"]} == doc["recipe"]
        assert config["seed"] == seed
        rows = [{"step": r.history.step.num,
                 **{i.key or ".".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}}
                for r in records if r.WhichOneof("record_type") == "history"]
        assert [row["step"] for row in rows] == [1, 2, 3]
        assert [row["test_acc"] for row in rows] == pytest.approx([h["test_acc"] for h in doc["history"]])
        (artifact,) = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
        assert artifact.type == "results"
        assert {c.path for c in artifact.manifest.contents} == {"results.json", "metrics.csv"}


# ---------------------------------------------------------------------------------------------
# Study cells are tagged.
# ---------------------------------------------------------------------------------------------


def test_study_cells_carry_study_cell_and_value_tags(tmp_path: Path) -> None:
    from biasbench.study.schema import load_study, with_output_dir

    study = load_study(ROOT / "studies/bias_only_width.yaml", smoke=True)
    cell = study.cells[0]
    recipe = with_output_dir(cell, tmp_path / "width_study")
    assert recipe.output.tags["study"] == "width_study" and recipe.output.tags["cell"] == cell.name
    for key, value in cell.values.items():
        assert recipe.output.tags[key] == str(value)
