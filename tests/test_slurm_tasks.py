"""One run on several Slurm tasks: what `launcher` asks of sbatch (no cluster needed here; the
run itself on a real cluster: tests/test_study_slurm.py, `make test-slurm`)."""

from __future__ import annotations

import pytest
import yaml
from submitit.slurm.slurm import _make_sbatch_string

from biasbench.study.slurm import executor_for
from biasbench.study.specs import LauncherSpec
from tests.conftest import one_line_error, run_cli, tiny_recipe, write_recipe


def _sbatch(tmp_path, **launcher) -> str:
    executor = executor_for(LauncherSpec(**launcher), tmp_path, "s")
    return _make_sbatch_string(command="true", folder=str(tmp_path), **executor.parameters)


def test_nodes_and_gpus_per_node_give_one_task_per_device(tmp_path):
    text = _sbatch(tmp_path, nodes=2, gpus_per_node=4)
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=4" in text and "--gpus-per-node=4" in text
    text = _sbatch(tmp_path, tasks_per_node=2, cpus_per_task=1)  # CPU ranks (gloo)
    assert "#SBATCH --ntasks-per-node=2" in text and "#SBATCH --nodes=1" in text
    one = _sbatch(tmp_path, gpus_per_node=1)  # one device: one task, as before
    assert "--ntasks-per-node" not in one


@pytest.mark.parametrize("launcher, words", [
    ({"tasks_per_node": 0}, "launcher.tasks_per_node` must be at least 1"),
    ({"nodes": "two"}, "launcher.nodes"),
])
def test_bad_task_counts_are_refused_in_one_line(tmp_path, launcher, words):
    write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"recipe": "r.yaml", "launcher": launcher}))
    code, out, err = run_cli(["sweep", str(path), "--dry-run"])
    one_line_error(code, err, words)
