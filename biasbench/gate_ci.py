"""What the gate tells a CI system: JUnit XML, a Markdown summary, GitHub annotations, a history.

- JUnit XML (`--junit`): one test case per check (metric and rule), filed under the runs' recipe
  name; a failed check is a `<failure>` whose message holds the measured value, the limit and
  the p-value. An inconclusive check is a failure only when the gate says `inconclusive: fail`
  (as the exit code); otherwise it passes and says why in `<system-out>`. GitHub's test
  reporters, GitLab's `artifacts:reports:junit` and Jenkins' junit step read this format.
- Markdown (`--summary`, and `$GITHUB_STEP_SUMMARY` when set): a marker line (so a bot can find
  and update one pull-request comment instead of posting another), the verdict, the table and a
  link line; kept under GitHub's 1 MiB limit for step summaries (and 64 KiB, a comment's).
- Annotations: under GitHub Actions, `::error` (failed) and `::warning` (inconclusive) lines that
  GitHub shows on the gate file's line of the metric.
- History (`--history`): one JSON line per gate run with the commit and each metric's figures;
  `history:` rules compare with the best or median of the last N entries.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from biasbench.errors import UserError
from biasbench.fsutil import atomic_write_text, hold_lock, writing
from biasbench.gate import Check, GateResult
from biasbench.tables import fmt_value

MARKER = "<!-- biasbench-gate-summary -->"  # the first line: find the comment to update by it
SUMMARY_LIMIT = 60_000  # bytes: under a PR comment's 65,536 characters, so far under 1 MiB
_MESSAGE_LIMIT = 400  # characters of one check's message in the table


def _fails(check: Check, inconclusive_fails: bool) -> bool:
    return check.outcome == "fail" or (check.outcome == "inconclusive" and inconclusive_fails)


def _figures(c: Check) -> str:
    shown = [f"measured {fmt_value(c.value, c.metric)}"] if c.value is not None else []
    if c.threshold is not None:
        shown.append(f"limit {fmt_value(c.threshold, c.metric)}")
    shown.append(f"p={c.p_value:.3g}" if c.p_value is not None else "p=n/a")
    return ", ".join(shown)


def _case_name(c: Check) -> str:
    return c.rule if c.metric == "-" else f"{c.metric} {c.rule}"


# ---------------------------------------------------------------------------------------------
# JUnit XML.
# ---------------------------------------------------------------------------------------------


def junit_xml(result: GateResult, inconclusive_fails: bool = False) -> str:
    """The checks as JUnit XML: <testsuites><testsuite name=gate><testcase classname=recipe>."""
    failures = sum(_fails(c, inconclusive_fails) for c in result.checks)
    suites = ET.Element("testsuites", name="biasbench gate", tests=str(len(result.checks)),
                        failures=str(failures), errors="0")
    suite = ET.SubElement(suites, "testsuite", name=f"gate {result.gate}", tests=str(len(result.checks)),
                          failures=str(failures), errors="0", skipped="0", time="0",
                          timestamp=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    props = ET.SubElement(suite, "properties")
    for name, value in (("gate", result.gate), ("reference", result.reference or ""), ("runs", str(result.runs)),
                        ("outcome", result.outcome)):
        ET.SubElement(props, "property", name=name, value=value)
    for c in result.checks:
        case = ET.SubElement(suite, "testcase", name=_case_name(c), classname=f"biasbench.gate.{result.name}",
                             time="0")
        if _fails(c, inconclusive_fails):
            failure = ET.SubElement(case, "failure", message=f"{c.outcome}: {_figures(c)}", type=c.outcome)
            failure.text = c.message
        else:
            ET.SubElement(case, "system-out").text = f"{c.outcome}: {c.message} ({_figures(c)})"
    ET.indent(suites)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suites, encoding="unicode") + "\n"


# ---------------------------------------------------------------------------------------------
# Markdown summary.
# ---------------------------------------------------------------------------------------------

_ICON = {"pass": "✅", "inconclusive": "⚠️", "fail": "❌"}


def ci_link() -> str | None:
    """The CI run's page, from GitHub Actions' or GitLab CI's variables."""
    env = os.environ
    if env.get("GITHUB_RUN_ID") and env.get("GITHUB_REPOSITORY"):
        server = env.get("GITHUB_SERVER_URL", "https://github.com")
        return f"{server}/{env['GITHUB_REPOSITORY']}/actions/runs/{env['GITHUB_RUN_ID']}"
    return env.get("CI_JOB_URL") or None


def _cell(text: str) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"


def summary_markdown(result: GateResult, inconclusive_fails: bool = False, link: str | None = None) -> str:
    code = result.exit_code(inconclusive_fails)
    head = [MARKER,
            f"### {_ICON[result.outcome]} biasbench gate: {result.outcome.upper()} "
            f"(exit {code}, {'regression' if code else 'pass'})", "",
            f"`{_cell(result.name)}`, {result.runs} runs, gate `{_cell(result.gate)}`"
            + (f" against `{_cell(result.reference)}`" if result.reference else ""), "",
            "| outcome | check | measured | limit | p | detail |", "|---|---|---|---|---|---|"]
    tail = ["", f"[CI run]({link}) · rules: docs/ci.md" if link else "rules: docs/ci.md"]
    rows, size = [], len("\n".join(head + tail).encode())
    for i, c in enumerate(result.checks):
        row = (f"| {_ICON[c.outcome]} {c.outcome} | {_cell(_case_name(c))} | {fmt_value(c.value, c.metric)} | "
               f"{fmt_value(c.threshold, c.metric)} | {'-' if c.p_value is None else f'{c.p_value:.3g}'} | "
               f"{_cell(c.message)} |")
        if size + len(row.encode()) + 200 > SUMMARY_LIMIT:
            rows.append(f"| | {len(result.checks) - i} more checks | | | | see the job's log |")
            break
        rows.append(row)
        size += len(row.encode()) + 1
    return "\n".join(head + rows + tail) + "\n"


# ---------------------------------------------------------------------------------------------
# GitHub annotations.
# ---------------------------------------------------------------------------------------------


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _metric_line(gate_file: Path, metric: str) -> int | None:
    """The line of `metric:` in the gate file, where GitHub shows the annotation."""
    try:
        lines = gate_file.read_text().splitlines()
    except OSError:
        return None
    key = re.compile(rf"^\s*{re.escape(metric)}\s*:")
    return next((i + 1 for i, line in enumerate(lines) if key.match(line)), None)


def github_annotations(result: GateResult, gate_file: Path, inconclusive_fails: bool = False) -> list[str]:
    """`::error file=...,line=...,title=...::message` per failed check, `::warning` per
    inconclusive one that does not fail the gate."""
    out = []
    for c in result.checks:
        if c.outcome == "pass":
            continue
        level = "error" if _fails(c, inconclusive_fails) else "warning"
        line = _metric_line(gate_file, c.metric) if c.metric != "-" else None
        where = f"file={_escape_property(str(gate_file))}" + (f",line={line}" if line else "")
        title = _escape_property(f"biasbench gate: {_case_name(c)} {c.outcome}")
        out.append(f"::{level} {where},title={title}::{_escape_data(c.message)}")
    return out


# ---------------------------------------------------------------------------------------------
# History.
# ---------------------------------------------------------------------------------------------


def read_history(path: Path) -> list[dict[str, Any]]:
    """The entries of a history file (JSON lines); a missing file is an empty history."""
    if not path.exists():
        return []
    if path.is_dir():
        raise UserError(f"--history `{path}` is a folder; give a file name")
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            entry = None
        if not isinstance(entry, dict) or not isinstance(entry.get("metrics"), dict):
            raise UserError(f"--history `{path}` line {n} is not a gate history entry (a JSON object with "
                            "`metrics`); fix or remove that line")
        entries.append(entry)
    return entries


def commit_of(result_runs: list[Any]) -> str | None:
    """The commit measured: the CI's variable, else the git revision the runs recorded."""
    for var in ("GITHUB_SHA", "CI_COMMIT_SHA"):
        if os.environ.get(var):
            return os.environ[var]
    for run in result_runs:
        rev = (run.doc.get("environment") or {}).get("git_revision")
        if rev:
            return str(rev)
    return None


def history_entry(result: GateResult, commit: str | None) -> dict[str, Any]:
    return {"commit": commit, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "gate": result.gate, "name": result.name, "outcome": result.outcome, "metrics": result.figures}


def append_history(path: Path, entry: dict[str, Any]) -> None:
    """Add one line, under a lock and by atomic replacement: parallel gates and a killed job
    never lose or tear earlier entries."""
    with writing(path, "give --history a path in a writable folder"):
        path.parent.mkdir(parents=True, exist_ok=True)
        with hold_lock(path.with_name(path.name + ".lock"), f"history `{path}`"):
            old = path.read_text() if path.exists() else ""
            if old and not old.endswith("\n"):
                old += "\n"
            atomic_write_text(path, old + json.dumps(entry, default=str) + "\n")
