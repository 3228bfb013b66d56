"""What the image scan saw and did, per target: kept between scans, shown by `status` and the artifact. Pure."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ScanOutcome = Literal["current", "updated", "no-tag", "failed"]
MAX_MESSAGE = 500


class TargetScan(BaseModel):
    model_config = ConfigDict(extra="ignore")

    target_type: str
    target: str
    policy: str  # ImagePolicy.describe()
    repository: str
    scanned_at: dt.datetime
    outcome: ScanOutcome
    message: str = ""
    error_kind: Literal["transient", "permanent"] | None = None
    newest_tag: str | None = None  # the newest allowed tag the registry listed
    # set when newest_tag (image, tags_*) is kept from an earlier scan because this one failed: when
    # the registry last listed it; None when this scan read it
    newest_tag_at: dt.datetime | None = None
    image: str | None = None  # what the policy wants the target to run
    tags_seen: int = 0
    tags_ignored: int = 0  # matched the filter but did not parse as the policy's kind
    tags_filtered_out: int = 0
    tags_out_of_range: int = 0
    # the last write-back for this target (kept from earlier scans until a new one happens)
    written_image: str | None = None
    written_at: dt.datetime | None = None
    written_to: str | None = None  # the commit, or the merge request's URL


class ScanStatus(BaseModel):
    model_config = ConfigDict(extra="ignore")

    environment: str
    scanned_at: dt.datetime
    revision: str | None = None  # the GitOps repo's revision the policies were read from
    flow_run_id: str | None = None
    targets: list[TargetScan] = Field(default_factory=list)

    @property
    def failed(self) -> list[TargetScan]:
        return [t for t in self.targets if t.outcome == "failed"]

    def carry_over(self, previous: ScanStatus | None) -> ScanStatus:
        """Keep from `previous` what this scan did not produce for a target: its last write-back when
        this scan wrote nothing, and, when this scan failed, the newest tag (image and tag counts) the
        registry last listed under the same policy, with when that was (`newest_tag_at`). The row
        keeps this scan's outcome, message and scanned_at: it still says the scan failed and when."""
        if previous is None:
            return self
        before = {(t.target_type, t.target): t for t in previous.targets}
        targets = []
        for t in self.targets:
            old = before.get((t.target_type, t.target))
            if t.written_image is None and old is not None and old.written_image is not None:
                t = t.model_copy(update={"written_image": old.written_image, "written_at": old.written_at,
                                         "written_to": old.written_to})
            if (t.outcome == "failed" and t.newest_tag is None and old is not None and old.newest_tag is not None
                    and (old.policy, old.repository) == (t.policy, t.repository)):
                t = t.model_copy(update={
                    "newest_tag": old.newest_tag, "newest_tag_at": old.newest_tag_at or old.scanned_at,
                    "image": old.image, "tags_seen": old.tags_seen, "tags_ignored": old.tags_ignored,
                    "tags_filtered_out": old.tags_filtered_out, "tags_out_of_range": old.tags_out_of_range})
            targets.append(t)
        return self.model_copy(update={"targets": targets})


def _when(at: dt.datetime | None) -> str:
    return "-" if at is None else f"{at:%Y-%m-%d %H:%M:%S}"


def status_lines(status: ScanStatus | None) -> list[str]:
    """The `status` command's image scan section."""
    if status is None:
        return ["image scan:               never (no image_policy scanned yet)"]
    lines = [f"image scan:               {_when(status.scanned_at)} at revision {(status.revision or '-')[:12]}"]
    for t in status.targets:
        lines.append(f"  {t.target_type} {t.target}: {t.policy}")
        lines.append(f"    newest tag {t.newest_tag or '-'} of {t.tags_seen} ({t.tags_ignored} unparseable)"
                     + _as_of(t) + f", scanned {_when(t.scanned_at)}: {t.outcome}"
                     + (f" ({t.message})" if t.message else ""))
        lines.append(f"    written back: {t.written_image or '-'}" +
                     (f" at {_when(t.written_at)} ({t.written_to})" if t.written_image else ""))
    return lines


def markdown(status: ScanStatus) -> str:
    """The scan's artifact."""
    rows = ["| Target | Policy | Newest tag | Tags (unparseable) | Scanned | Outcome | Written back |",
            "|---|---|---|---|---|---|---|"]
    for t in status.targets:
        written = f"`{t.written_image}` ({t.written_to or '-'}, {_when(t.written_at)})" if t.written_image else "-"
        outcome = t.outcome + (f": {_cell(t.message)}" if t.message else "")
        rows.append(f"| {t.target_type} `{t.target}` | {_cell(t.policy)} | {t.newest_tag or '-'}{_as_of(t)} | "
                    f"{t.tags_seen} ({t.tags_ignored}) | {_when(t.scanned_at)} | {outcome} | {written} |")
    head = [f"# Image scan of `{status.environment}`", "",
            f"Revision `{(status.revision or '-')[:12]}`, {_when(status.scanned_at)} UTC.", ""]
    return "\n".join(head + (rows if status.targets else ["No target has an image_policy."]))


def _as_of(t: TargetScan) -> str:
    """Says the newest tag is an earlier scan's (this one failed)."""
    return f" as of {_when(t.newest_tag_at)}" if t.newest_tag and t.newest_tag_at else ""


def _cell(text: str) -> str:
    return text[:MAX_MESSAGE].replace("|", "\\|").replace("\n", " ")
