"""The gate in CI: JUnit XML read by a real consumer, the Markdown summary, GitHub annotations,
the history and its rules, and the throughput / peak-memory gates."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from junitparser import Failure, JUnitXml
from markdown_it import MarkdownIt

from biasbench import gate_ci
from biasbench.gate import Check, GateResult
from tests.conftest import one_line_error, run_cli
from tests.smoke_runs import ROOT
from tests.test_gate import gate_file, write_runs

REFERENCE = str(ROOT / "tests/reference/quickstart_smoke")


def with_field(folder: Path, docs: list[dict[str, Any]], key: str, values: list[float]) -> Path:
    """Copies of the runs with a run-level figure (images_per_second, peak_memory_mb) set."""
    changed = [copy.deepcopy(d) for d in docs]
    for d, v in zip(changed, values, strict=True):
        d[key] = v
    return write_runs(folder, changed)


# ---------------------------------------------------------------------------------------------
# JUnit XML, read back by junitparser.
# ---------------------------------------------------------------------------------------------


def test_junit_counts_and_failure_details(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    # test_acc collapsed by 0.5 in every replicate (a clear fail); train_acc and the loss pass
    runs = write_runs(tmp_path / "runs", docs, [-0.5, -0.5, -0.5])
    gate = gate_file(tmp_path, {"reference": REFERENCE, "metrics": {
        "test_acc": {"floor": 0.85, "max_drop": 0.05}, "train_acc": {"floor": 0.5},
        "test_loss": {"ceiling": 5.0}}})
    xml = tmp_path / "gate.xml"
    code, out, err = run_cli(["compare", str(runs), "--gate", str(gate), "--junit", str(xml)])
    assert code == 1, out + err
    suites = JUnitXml.fromfile(str(xml))
    (suite,) = list(suites)
    cases = {case.name: case for case in suite}
    assert set(cases) == {"diverged", "test_acc floor", "test_acc max_drop", "train_acc floor", "test_loss ceiling"}
    failed = {name for name, case in cases.items() if not case.is_passed}
    assert failed == {"test_acc floor", "test_acc max_drop"}
    assert suite.tests == 5 and suite.failures == 2
    assert all(case.classname == "biasbench.gate.quickstart_smoke" for case in suite)
    (floor,) = [r for r in cases["test_acc floor"].result if isinstance(r, Failure)]
    mean = sum(d["final"]["test_acc"] for d in docs) / 3 - 0.5
    assert f"measured {100 * mean:.2f}%" in floor.message and "limit 85.00%" in floor.message
    assert "p=" in floor.message and "p=n/a" not in floor.message  # identical shifts: p from zero variance


def test_junit_inconclusive_fails_only_when_the_gate_says_so(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    # a noisy breach of the floor: inconclusive
    runs = write_runs(tmp_path / "runs", docs, [0.0, -0.2, 0.01])
    mean = sum(d["final"]["test_acc"] for d in docs) / 3 - 0.19 / 3
    for inconclusive, failures, exit_code in (("pass", 0, 0), ("fail", 1, 1)):
        gate = gate_file(tmp_path, {"inconclusive": inconclusive,
                                    "metrics": {"test_acc": {"floor": round(mean + 0.01, 4)}}})
        xml = tmp_path / f"{inconclusive}.xml"
        code, out, _ = run_cli(["compare", str(runs), "--gate", str(gate), "--junit", str(xml)])
        assert code == exit_code and "INCONCLUSIVE" in out
        (suite,) = list(JUnitXml.fromfile(str(xml)))
        assert suite.failures == failures and suite.tests == 2


# ---------------------------------------------------------------------------------------------
# Markdown summary: rendered, its structure, its size, $GITHUB_STEP_SUMMARY.
# ---------------------------------------------------------------------------------------------


def rendered_rows(markdown: str) -> list[list[str]]:
    """The body rows of the (one) table, as rendered by a CommonMark + GFM-table parser."""
    tokens = MarkdownIt("commonmark").enable("table").parse(markdown)
    rows, row, in_body = [], [], False
    for t in tokens:
        if t.type == "tbody_open":
            in_body = True
        elif t.type == "tr_close" and in_body:
            rows.append(row)
            row = []
        elif t.type == "inline" and in_body:
            row.append(t.content)
    return rows


def test_summary_renders_a_table_with_a_row_per_check(docs: list[dict[str, Any]], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    runs = write_runs(tmp_path / "runs", docs, [-0.5, -0.5, -0.5])
    gate = gate_file(tmp_path, {"metrics": {"test_acc": {"floor": 0.85}, "test_loss": {"ceiling": 5.0}}})
    step = tmp_path / "step_summary.md"
    step.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    monkeypatch.setenv("GITHUB_SERVER_URL", "https://github.com")
    monkeypatch.setenv("GITHUB_REPOSITORY", "lab/biasbench")
    monkeypatch.setenv("GITHUB_RUN_ID", "42")
    summary = tmp_path / "summary.md"
    code, _, _ = run_cli(["compare", str(runs), "--gate", str(gate), "--summary", str(summary)])
    assert code == 1
    text = summary.read_text()
    assert text.splitlines()[0] == gate_ci.MARKER  # the line a bot finds its comment by
    assert "biasbench gate: FAIL (exit 1, regression)" in text.splitlines()[1]
    rows = rendered_rows(text)
    assert [(r[0].split()[-1], r[1]) for r in rows] == [
        ("pass", "diverged"), ("fail", "test_acc floor"), ("pass", "test_loss ceiling")]
    assert rows[1][3] == "85.00%"
    assert "[CI run](https://github.com/lab/biasbench/actions/runs/42)" in text
    assert step.read_text() == "earlier step\n" + text  # appended, as GitHub expects


def test_summary_stays_under_the_comment_limit_with_many_long_checks() -> None:
    result = GateResult("g.yaml", None, 3, name="r")
    result.checks = [Check(f"test_m{i}", "floor", "fail", "x" * 5000, 0.5, 0.9, 0.01) for i in range(2000)]
    text = gate_ci.summary_markdown(result)
    assert len(text.encode()) <= gate_ci.SUMMARY_LIMIT < 2**20
    rows = rendered_rows(text)
    assert 50 < len(rows) < 2000 and "more checks" in rows[-1][1]
    assert all(len(r[5]) <= 400 for r in rows[:-1])  # each message cut to its limit


# ---------------------------------------------------------------------------------------------
# GitHub annotations.
# ---------------------------------------------------------------------------------------------


def test_annotations_only_under_github_actions(docs: list[dict[str, Any]], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    runs = write_runs(tmp_path / "runs", docs, [-0.5, -0.5, -0.5])
    gate = gate_file(tmp_path, {"metrics": {"train_acc": {"floor": 0.5}, "test_acc": {"floor": 0.85}}})
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    _, out, _ = run_cli(["compare", str(runs), "--gate", str(gate)])
    assert "::error" not in out
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    _, out, _ = run_cli(["compare", str(runs), "--gate", str(gate)])
    (line,) = [x for x in out.splitlines() if x.startswith("::")]
    test_acc_line = next(i for i, x in enumerate(gate.read_text().splitlines(), 1) if x.strip().startswith("test_acc:"))
    assert line.startswith(f"::error file={gate},line={test_acc_line},title=biasbench gate%3A test_acc floor fail::")
    assert "%25" in line and "%" not in line.replace("%25", "").replace("%3A", "")  # escaped per GitHub


# ---------------------------------------------------------------------------------------------
# History: appended with the commit; best and median of the last N.
# ---------------------------------------------------------------------------------------------


def _gate_with_history(tmp_path: Path, against: str, last: int = 10) -> Path:
    return gate_file(tmp_path, {"metrics": {"test_acc": {
        "history": {"against": against, "last": last, "max_drop": 0.02}}}})


def test_history_records_each_run_and_compares_with_the_best(docs: list[dict[str, Any]], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    history = tmp_path / "history.jsonl"
    gate = _gate_with_history(tmp_path, "best")
    for i, (shift, sha, want) in enumerate([(0.0, "aaa", 0), (-0.01, "bbb", 0), (-0.03, "ccc", 1)]):
        monkeypatch.setenv("GITHUB_SHA", sha)
        runs = write_runs(tmp_path / f"runs{i}", docs, [shift] * 3)
        code, out, err = run_cli(["compare", str(runs), "--gate", str(gate), "--history", str(history)])
        assert code == want, out + err
    entries = [json.loads(x) for x in history.read_text().splitlines()]
    assert [e["commit"] for e in entries] == ["aaa", "bbb", "ccc"]
    assert [e["outcome"] for e in entries] == ["pass", "pass", "fail"]
    best = sum(d["final"]["test_acc"] for d in docs) / 3
    assert entries[0]["metrics"]["test_acc"]["mean"] == pytest.approx(best)
    assert entries[2]["metrics"]["test_acc"]["values"] == pytest.approx([d["final"]["test_acc"] - 0.03 for d in docs])
    # the third run is 3 points below the best (the first), more than the 2 allowed
    assert "best of the last 2 history entries" in " ".join(out.split())


def test_history_median_skips_failed_entries_and_keeps_the_last_n(docs: list[dict[str, Any]],
                                                                   tmp_path: Path) -> None:
    base = sum(d["final"]["test_acc"] for d in docs) / 3

    def entry(mean: float, outcome: str = "pass") -> str:
        return json.dumps({"commit": "x", "outcome": outcome,
                           "metrics": {"test_acc": {"estimator": "final", "mean": mean}}})

    history = tmp_path / "h.jsonl"
    # oldest first: a high one that falls out of the last 3, a failed collapse that never counts
    history.write_text("\n".join([entry(base + 0.5), entry(base + 0.01), entry(0.1, "fail"),
                                  entry(base + 0.03), entry(base + 0.05)]) + "\n")
    runs = write_runs(tmp_path / "runs", docs)
    code, out, _ = run_cli(["compare", str(runs), "--gate", str(_gate_with_history(tmp_path, "median", 3)),
                            "--history", str(history)])
    # median of the last 3 passing (base+0.01, +0.03, +0.05) is base+0.03: 3 points above, 2 allowed
    assert code == 1 and "median of the last 3 history entries" in " ".join(out.split())
    code, _, _ = run_cli(["compare", str(runs), "--gate", str(_gate_with_history(tmp_path, "median", 1)),
                          "--history", str(history)])
    assert code == 1  # last 1: the latest entry (the new one from the run before is a fail: skipped)
    code, _, _ = run_cli(["compare", str(runs), "--gate", str(_gate_with_history(tmp_path, "best", 50)),
                          "--history", str(history)])
    assert code == 1


def test_history_problems_are_one_line(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    runs = write_runs(tmp_path / "runs", docs)
    gate = _gate_with_history(tmp_path, "best")
    one_line_error(*run_cli(["compare", str(runs), "--gate", str(gate)])[::2], "--history FILE")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"metrics": {}}\nnot json\n')
    one_line_error(*run_cli(["compare", str(runs), "--gate", str(gate), "--history", str(bad)])[::2],
                   "line 2")
    one_line_error(*run_cli(["compare", str(runs), "--junit", str(tmp_path / "j.xml")])[::2], "--gate")
    wrong = gate_file(tmp_path, {"metrics": {"test_acc": {"history": {"against": "mean", "max_drop": 0.1}}}})
    one_line_error(*run_cli(["compare", str(runs), "--gate", str(wrong)])[::2], "best or median")


# ---------------------------------------------------------------------------------------------
# Throughput and peak memory, with the accuracy gate's noise rules.
# ---------------------------------------------------------------------------------------------


def test_smoke_runs_record_peak_memory(docs: list[dict[str, Any]]) -> None:
    import resource

    for d in docs:  # the process's peak resident set in MiB: more than torch itself, less than now
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        assert 50 < d["peak_memory_mb"] <= peak + 0.05  # (recorded rounded to 0.1 MiB)


def test_throughput_and_memory_gates_follow_the_noise_rules(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    gate = gate_file(tmp_path, {"metrics": {"samples_per_s": {"floor": 1000}, "peak_memory": {"ceiling": 500}}})
    steady = with_field(tmp_path / "a", docs, "images_per_second", [800.0, 810.0, 790.0])
    with_field(steady, json_docs(steady), "peak_memory_mb", [400.0, 410.0, 390.0])
    code, out, _ = run_cli(["compare", str(steady), "--gate", str(gate)])
    assert code == 1 and "FAIL floor samples_per_s" in " ".join(out.split())  # clearly slower
    assert "PASS ceiling peak_memory" in " ".join(out.split())
    noisy = with_field(tmp_path / "b", docs, "images_per_second", [1500.0, 300.0, 1100.0])
    with_field(noisy, json_docs(noisy), "peak_memory_mb", [400.0, 900.0, 250.0])
    code, out, _ = run_cli(["compare", str(noisy), "--gate", str(gate)])
    flat = " ".join(out.split())
    assert code == 0 and "INCONCLUSIVE floor samples_per_s" in flat and "INCONCLUSIVE ceiling peak_memory" in flat


def json_docs(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("results.json"))]


def test_run_level_metric_problems_are_one_line(docs: list[dict[str, Any]], tmp_path: Path) -> None:
    old = [copy.deepcopy(d) for d in docs]
    for d in old:
        d.pop("peak_memory_mb", None)
    runs = write_runs(tmp_path / "runs", old)
    gate = gate_file(tmp_path, {"metrics": {"peak_memory": {"ceiling": 500}}})
    one_line_error(*run_cli(["compare", str(runs), "--gate", str(gate)])[::2], "peak_memory_mb", "re-run")
    wrong = gate_file(tmp_path, {"metrics": {"samples_per_s": {"floor": 10, "estimator": "robust"}}})
    one_line_error(*run_cli(["compare", str(runs), "--gate", str(wrong)])[::2], "does not apply")
    wrong = gate_file(tmp_path, {"metrics": {"peak_memory": {"floor": 10}}})
    one_line_error(*run_cli(["compare", str(runs), "--gate", str(wrong)])[::2], "ceiling")


# ---------------------------------------------------------------------------------------------
# docs/ci.md: the two CI examples, run here with the variables each service sets.
# ---------------------------------------------------------------------------------------------

CI_DOC = ROOT / "docs/ci.md"
GATE = ROOT / "recipes/gates/quickstart_smoke.yaml"


def yaml_blocks(text: str) -> list[Any]:
    import yaml

    blocks = text.split("```yaml\n")[1:]
    return [yaml.safe_load(b.split("```")[0]) for b in blocks]


def gate_args(command: str) -> list[str]:
    import shlex

    words = shlex.split(command)
    assert words[0] == ".ci/gate"
    return words[1:]


def test_ci_examples_run_with_their_environment(runs_dir: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = yaml_blocks(CI_DOC.read_text())
    github = next(b for b in blocks if isinstance(b, dict) and "jobs" in b)
    gitlab = next(b for b in blocks if isinstance(b, dict) and "image" in (b.get("gate") or {}))
    (gh_run,) = [s["run"] for s in github["jobs"]["gate"]["steps"] if s.get("name") == "gate"]
    (gl_run,) = [line for line in gitlab["gate"]["script"] if line.startswith(".ci/gate")]
    assert gitlab["gate"]["artifacts"]["reports"]["junit"] == "gate.xml"
    services = {
        "github": (gh_run, {"GITHUB_ACTIONS": "true", "GITHUB_SHA": "abc123", "GITHUB_REPOSITORY": "lab/bb",
                            "GITHUB_RUN_ID": "7", "GITHUB_STEP_SUMMARY": str(tmp_path / "github/step.md")}),
        "gitlab": (gl_run, {"GITLAB_CI": "true", "CI_COMMIT_SHA": "def456",
                            "CI_JOB_URL": "https://gitlab.example/lab/bb/-/jobs/9"}),
    }
    for service, (command, env) in services.items():
        for var in ("GITHUB_ACTIONS", "GITHUB_SHA", "GITHUB_STEP_SUMMARY", "GITHUB_RUN_ID", "CI_COMMIT_SHA",
                    "CI_JOB_URL"):
            monkeypatch.delenv(var, raising=False)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        work = tmp_path / service
        work.mkdir(exist_ok=True)
        monkeypatch.chdir(work)
        code, out, err = run_cli(["compare", str(runs_dir), "--gate", str(GATE), *gate_args(command)])
        assert code == 0, out + err
        (suite,) = list(JUnitXml.fromfile(str(work / "gate.xml")))
        assert suite.tests >= 4 and suite.failures == 0
        summary = (work / "gate.md").read_text()
        assert summary.startswith(gate_ci.MARKER) and "PASS" in summary
        history = next(work.rglob("*history.jsonl"))
        assert json.loads(history.read_text())["commit"] == env.get("GITHUB_SHA", env.get("CI_COMMIT_SHA"))
        if service == "github":
            assert (work / "step.md").read_text() == summary
            assert "actions/runs/7" in summary
        else:
            assert env["CI_JOB_URL"] in summary and "::" not in out  # no GitHub annotations on GitLab


def test_ci_doc_annotation_is_what_the_gate_prints(docs: list[dict[str, Any]], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    collapsed = [copy.deepcopy(d) for d in docs]
    for d, acc in zip(collapsed, [0.10, 0.11, 0.09], strict=True):
        for row in [*d["history"], d["final"]]:
            row["test_acc"] = acc
    runs = write_runs(tmp_path / "runs", collapsed)
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    _, out, _ = run_cli(["compare", str(runs), "--gate", "recipes/gates/quickstart_smoke.yaml"])
    shown = [line for line in CI_DOC.read_text().splitlines() if line.startswith("::error")]
    assert shown and all(line in out.splitlines() for line in shown)
