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
        """Keep each target's last write-back from `previous` when this scan wrote nothing for it."""
        if previous is None:
            return self
        before = {(t.target_type, t.target): t for t in previous.targets}
        targets = []
        for t in self.targets:
            old = before.get((t.target_type, t.target))
            if t.written_image is None and old is not None and old.written_image is not None:
                t = t.model_copy(update={"written_image": old.written_image, "written_at": old.written_at,
                                         "written_to": old.written_to})
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
        lines.append(f"    newest tag {t.newest_tag or '-'} of {t.tags_seen} ({t.tags_ignored} unparseable), "
                     f"scanned {_when(t.scanned_at)}: {t.outcome}" + (f" ({t.message})" if t.message else ""))
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
        rows.append(f"| {t.target_type} `{t.target}` | {_cell(t.policy)} | {t.newest_tag or '-'} | "
                    f"{t.tags_seen} ({t.tags_ignored}) | {_when(t.scanned_at)} | {outcome} | {written} |")
    head = [f"# Image scan of `{status.environment}`", "",
            f"Revision `{(status.revision or '-')[:12]}`, {_when(status.scanned_at)} UTC.", ""]
    return "\n".join(head + (rows if status.targets else ["No target has an image_policy."]))


def _cell(text: str) -> str:
    return text[:MAX_MESSAGE].replace("|", "\\|").replace("\n", " ")
