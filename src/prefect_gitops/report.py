"""Render a reconcile result: markdown for the artifact, text for the terminal. Pure."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from prefect_gitops.result import ReconcileResult
from prefect_gitops.state import EnvironmentState
from prefect_gitops.status import Status, outcome as outcome_of



def _value(value: Any, present: bool = True) -> str:
    if not present:
        return "(absent)"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(result: ReconcileResult) -> str:
    lines = [f"# prefect-gitops: {result.environment}", ""]
    lines.append(f"**Outcome:** {outcome_of(result.status).summary}  ")
    lines.append(f"**Revision:** `{result.revision or 'unknown'}`  ")
    if result.file:
        lines.append(f"**File:** `{result.file}`  ")
    if result.flow_run_id:
        lines.append(f"**Flow run:** `{result.flow_run_id}`  ")
    if result.drift_check:
        lines.append(f"**Drift check:** {_md(result.drift_check)}  ")
    if result.message:
        lines.append(f"**Message:** {_md(result.message)}")
    lines.append("")
    changes = result.plan.changes if result.plan else []
    if changes:
        applied = {id(c) for c in result.applied}
        failed = {id(c) for c in result.failed}
        held = {id(c) for c in result.held}
        lines += ["## Plan", "", "| Target | Key | Old → New | Reason | Result |", "|---|---|---|---|---|"]
        for c in changes:
            if id(c) in applied:
                outcome = "applied"
            elif id(c) in failed:
                outcome = "**failed**"
            elif id(c) in held:
                outcome = "**held back** (smoke test failed)"
            elif not c.apply:
                outcome = "reported only"
            else:
                outcome = "not applied"
            new = _value(c.new) if c.action == "set" else "(unset)"
            reason = c.reason + (" (removed from Git)" if c.removed_from_git else "")
            lines.append(f"| {c.target_type} `{_md(c.target)}` | `{_md(c.key)}` | "
                         f"`{_md(_value(c.old, c.old_present))}` → `{_md(new)}` | {reason} | {outcome} |")
        lines.append("")
    elif result.plan is not None:
        lines += [f"No changes: {len(result.plan.noops)} managed key(s) in sync.", ""]
    if len(result.waves) > 1 or any(w.state != "pending" for w in result.waves if len(result.waves) > 1):
        lines += ["## Waves", "", "| Wave | Name | Changes | Max parallel | State |", "|---|---|---|---|---|"]
        for w in result.waves:
            lines.append(f"| {w.number} | {_md(w.name)} | {len(w.changes)} | {w.max_parallel} | {w.state} {_md(w.message)} |")
        lines.append("")
    if result.smoke_tests:
        lines += ["## Smoke tests", "", "| Test | Image | Targets | Result | Detail |", "|---|---|---|---|---|"]
        for t in result.smoke_tests:
            r = result.smoke_results.get(t.id)
            verdict = "not run" if r is None else ("passed" if r.passed else f"**{r.reason}**")
            what = t.kind + (f" ({t.deployment})" if t.deployment else "")
            detail = "" if r is None else _md(r.message + "".join(f"; {k} {v}" for k, v in r.detail.items()))
            lines.append(f"| {what} | `{_md(t.image)}` | {_md(', '.join(n for _, n in t.targets))} | {verdict} | {detail} |")
        lines.append("")
        for t in result.smoke_tests:
            r = result.smoke_results.get(t.id)
            if r is not None and not r.passed and r.log_tail:
                lines += [f"### Log tail: {t.kind} test of `{_md(t.image)}`", "", "```", r.log_tail, "```", ""]
        if any(t.kind == "process" for t in result.smoke_tests):
            lines += ["_process smoke tests run the command on the worker's machine: they do not isolate the image._", ""]
    if result.post_apply_results:
        lines += ["## Post-apply check", "", "| Deployment | Result | Detail |", "|---|---|---|"]
        for d, r in result.post_apply_results.items():
            lines.append(f"| `{_md(d)}` | {'passed' if r.passed else '**' + r.reason + '**'} | {_md(r.message)} |")
        lines.append("")
    if result.rolled_back is not None:
        rb = result.rolled_back
        lines += ["## Rolled back", "",
                  f"{rb.reason.capitalize()} rollback from `{rb.from_revision}` to `{rb.to_revision or '-'}`; "
                  f"{len(result.reverted) or len(result.applied)} value(s) restored. "
                  "Reconciles hold this environment until Git moves to a new revision (or one is forced).", ""]
    if result.problems or result.errors:
        lines += ["## Errors", ""]
        lines += [f"- {_md(str(p))}" for p in result.problems]
        lines += [f"- {_md(e)}" for e in result.errors]
        lines.append("")
    return "\n".join(lines)


def text(result: ReconcileResult) -> str:
    lines = [f"environment {result.environment} at {result.revision or 'unknown revision'}: {outcome_of(result.status).summary}"]
    if result.status in (Status.PLANNED, Status.IN_SYNC) and result.message:
        lines.append(f"  {result.message}")
    for c in result.plan.changes if result.plan else []:
        new = _value(c.new) if c.action == "set" else "(unset)"
        flag = "" if c.apply else "  (reported only)"
        lines.append(f"  {c.action:5} {c.target_type} {c.target} {c.key}: "
                     f"{_value(c.old, c.old_present)} -> {new}  [{c.reason}]{flag}")
    for t in result.smoke_tests:
        r = result.smoke_results.get(t.id)
        lines.append(f"  smoke {t.describe()}: {'not run' if r is None else r.reason + ' ' + r.message}")
    for d, r in result.post_apply_results.items():
        lines.append(f"  post-apply check {d}: {r.reason} {r.message}")
    for p in result.problems:
        lines.append(f"  error: {p}")
    for e in result.errors:
        lines.append(f"  error: {e}")
    if result.status is Status.APPLIED:
        lines.append(f"  {len(result.applied)} change(s) applied")
    return "\n".join(lines)


def _when(at: dt.datetime | None) -> str:
    return "-" if at is None else f"{at:%Y-%m-%d %H:%M:%S}"


def status_text(state: EnvironmentState) -> str:
    c = state.condition
    lines = [
        f"environment:              {state.environment}",
        f"source:                   {state.source or '-'} @ {state.ref or '-'}",
        f"last attempted revision:  {state.last_attempted_revision or '-'} ({state.last_attempted_at or '-'})",
        f"last applied revision:    {state.last_applied_revision or '-'} ({state.last_applied_at or '-'})",
        f"ready:                    {'-' if c is None else ('yes' if c.ready else 'no')}"
        + (f" ({c.reason}: {c.message})" if c else ""),
        f"managed keys:             {state.inventory.count()}",
        f"last drift check:         {_when(state.last_drift_check_at)} (every target last read "
        f"{_when(state.last_full_read_at)})",
        "suspended:                " + ("no" if state.suspended is None else
            f"yes since {state.suspended.at:%Y-%m-%d %H:%M:%S} ({state.suspended.reason or 'no reason given'})"),
        "rolled back:              " + ("no" if state.rolled_back is None else
            f"yes ({state.rolled_back.reason}) from {state.rolled_back.from_revision[:12]} to "
            f"{(state.rolled_back.to_revision or '-')[:12]} at {state.rolled_back.at:%Y-%m-%d %H:%M:%S}; "
            "out of sync with Git until Git moves or a reconcile is forced"),
        "history (newest first):",
    ]
    for h in state.history_index[:20]:
        lines.append(f"  {h.finished_at:%Y-%m-%d %H:%M:%S} {h.revision[:12]} {h.outcome:8} "
                     f"{h.changes} change(s) flow run {h.flow_run_id or '-'}")
    if not state.history_index:
        lines.append("  (none)")
    return "\n".join(lines)
