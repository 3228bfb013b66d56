"""The Prefect UI's Custom run form for gitops-reconcile/reconcile-qa, end to end in headless Chromium.

The test server serves the UI at PREFECT_UI_URL. The test opens the deployment's page, goes to its
Custom run form, checks every parameter's title and description (and the Drift mode options), turns
Dry run on, submits, and waits for the real worker to finish the run. Every description must show in
the form exactly as written: the UI renders them as Markdown, which drops `<word>` as an HTML tag and
eats `*`, `_` and backslashes, so a description it mangles fails the test. The README promises the
form's dry run "writes nothing": everything a reconcile of qa could write (the workload's job
variables, the control pool's template and queues, the recorded state and history blocks, the
environment's lock limit) is read back from the server after the run and must be as it was before,
and the run's outcome must be the documented one (`planned`, "Planned only (dry run): nothing was
written", every change "not applied"). Screenshots of the form and of the completed flow run land in
test-artifacts/ at the repo root; on failure, a screenshot and the page's HTML land there too and the
assertion message names them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from control_plane import REPO_ROOT, ControlPlane

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium")) if p and os.access(p, os.X_OK)), None)
if CHROMIUM is None:
    pytest.skip("no Chromium at /usr/bin/chromium or on PATH (apt-get install chromium)", allow_module_level=True)
try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError as exc:  # pragma: no cover - depends on the environment
    pytest.skip(f"playwright is not importable ({exc}); pip install playwright==1.65.2", allow_module_level=True)

ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
DEPLOYMENT = "gitops-reconcile/reconcile-qa"
RECONCILES = (DEPLOYMENT, "gitops-reconcile/reconcile-prod")
UI_TIMEOUT_MS = 30_000
RUN_TIMEOUT_S = 180
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory):
    plane = ControlPlane(tmp_path_factory.mktemp("control-ui"), schedules_active=False).start()
    # reconcile-qa and reconcile-prod are deployed with their schedules paused: on a slow machine a
    # scheduled (not dry) run could write while the test watches the dry run, so the only reconcile
    # here is the one the form starts; the test checks that
    yield plane
    plane.stop()


@pytest.fixture
def page():
    ARTIFACTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000})
        context.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def ui_url() -> str:
    return os.environ["PREFECT_UI_URL"].rstrip("/")


def sync_client():
    from prefect import get_client

    return get_client(sync_client=True)


@contextlib.contextmanager
def step(page: Page, name: str, extra=lambda: ""):
    """On any failure inside, keep a screenshot and the HTML, and fail naming them."""
    try:
        yield
    except Exception as exc:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        png, html = ARTIFACTS / f"ui-failure-{name}-{stamp}.png", ARTIFACTS / f"ui-failure-{name}-{stamp}.html"
        with contextlib.suppress(Exception):
            page.screenshot(path=str(png), full_page=True)
        with contextlib.suppress(Exception):
            html.write_text(page.content())
        raise AssertionError(f"UI step {name!r} failed at {page.url}: {exc}\n"
                             f"screenshot: {png}\nhtml: {html}\n{extra()}") from exc


def form_property(page: Page, title: str):
    """One field of the schema form, by its visible label ("Title" or "Title (Optional)")."""
    label = page.locator(".schema-form-property__label",
                         has_text=re.compile(rf"^\s*{re.escape(title)}( \(Optional\))?\s*$"))
    return page.locator("div.schema-form-property").filter(has=label)


def screenshot(page: Page, name: str) -> Path:
    """The whole page: the UI scrolls inside its main pane, so full_page alone stops at the viewport."""
    path = ARTIFACTS / name
    size = page.viewport_size
    height = page.evaluate("Math.max(...Array.from(document.querySelectorAll('*'), e => e.scrollHeight))")
    page.set_viewport_size({"width": size["width"], "height": min(max(height, size["height"]), 6000)})
    try:
        page.wait_for_timeout(300)  # let the layout settle at the new size
        page.screenshot(path=str(path), full_page=True)
    finally:
        page.set_viewport_size(size)
    return path


def normalized(text: str) -> str:
    return " ".join(text.split())


def as_read(description: str) -> str:
    """What a description should show in the form: its words as written, code spans without their backticks."""
    return normalized(re.sub(r"`([^`]+)`", r"\1", description))


def server_record(plane: ControlPlane) -> dict:
    """Everything a reconcile of qa could write, read back from the server (README: the targets, the
    "Where the record lives" blocks, the environment's lock limit)."""
    from concurrent.futures import ThreadPoolExecutor

    from helpers import _with_client, run
    from prefect.exceptions import ObjectNotFound

    from prefect_gitops.adapters.locks import environment_limit
    from prefect_gitops.adapters.state_store import record_documents, unpacked

    record: dict = {}
    with sync_client() as client:
        pool = client.read_work_pool(plane.pool)
        record["pool"] = (pool.base_job_template, pool.concurrency_limit, pool.is_paused)
        record["queues"] = sorted((q.name, q.priority, q.concurrency_limit, q.is_paused)
                                  for q in client.read_work_queues(work_pool_name=plane.pool))
        record["deployments"] = {name: client.read_deployment_by_name(name).job_variables
                                 for name in (plane.workload, plane.prod_workload)}
        # in a thread of its own: Playwright's sync API keeps an event loop running in this one
        with ThreadPoolExecutor(1) as thread:
            documents = thread.submit(run, _with_client(lambda c: record_documents(c, plane.env))).result()
        for document in documents:
            record[document.name] = (str(document.id), str(document.block_schema_id), unpacked(document))
        try:
            limit = client.read_global_concurrency_limit_by_name(environment_limit(plane.env))
            record["lock"] = (str(limit.id), limit.limit, limit.active, limit.active_slots)
        except ObjectNotFound:
            record["lock"] = None
    return record


def reconcile_runs() -> dict[str, str]:
    """Every flow run of the reconcile deployments (other test modules' too: same names), by id: its state."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with sync_client() as client:
        ids = [client.read_deployment_by_name(name).id for name in RECONCILES]
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=ids)))
    return {str(r.id): r.state_name or "" for r in runs}


PLAN_ROW = re.compile(r"^\| (\w+) `(.+?)` \| `(.+?)` \| `(.*?)` → `(.*?)` \| (.+?) \| (.+?) \|$")


def test_custom_run_form_submits_a_dry_run_that_completes(control_plane, page):
    with sync_client() as client:
        deployment = client.read_deployment_by_name(DEPLOYMENT)
    schema = deployment.parameter_openapi_schema
    deployment_url = f"{ui_url()}/deployments/deployment/{deployment.id}"
    worker_log = lambda: "worker log tail:\n" + (control_plane.tmp / "worker.log").read_text()[-3000:]  # noqa: E731
    runs_before = reconcile_runs()
    before = server_record(control_plane)

    with step(page, "deployment-page"):
        page.goto(deployment_url, wait_until="domcontentloaded")
        expect(page.get_by_text("reconcile-qa", exact=True).first).to_be_visible()
        page.get_by_role("button", name="Run", exact=True).click()  # "Runs" in the nav is a role=button link too
        page.get_by_text("Custom run", exact=True).click()
        # the UI carries the deployment's parameters in the query string: /run?parameters=...
        page.wait_for_url(re.compile(rf"/deployments/deployment/{deployment.id}/run(\?|$)"))

    with step(page, "run-form"):
        expect(page.get_by_text("Parameters", exact=True).first).to_be_visible()
        expect(form_property(page, "Dry run")).to_have_count(1)
        mangled = []
        for key, prop in schema["properties"].items():
            field = form_property(page, prop["title"])
            expect(field, f"field {key!r} titled {prop['title']!r}").to_have_count(1)
            description = field.locator(".schema-form-property__description")
            expect(description, f"description of {key!r}").to_have_count(1)
            # the field is on the page, so is its description: what it shows now is what users read
            shown = normalized(description.inner_text())
            if shown != as_read(prop["description"]):
                mangled.append(f"{key}: written {prop['description']!r}, shown {shown!r}")
        assert not mangled, ("the UI renders parameter descriptions as Markdown and shows these differently "
                             "from how they are written (a <word> is dropped as an HTML tag; *, _ and \\ "
                             "are eaten): put such text in backticks or reword it:\n" + "\n".join(mangled))

        required = form_property(page, "Environment")
        expect(required.locator(".schema-form-property__label")).to_have_text(re.compile(r"^\s*Environment\s*$"))
        expect(required.get_by_role("textbox")).to_have_value("qa")
        expect(form_property(page, "Dry run")).to_contain_text("Plan and publish the plan artifact, write nothing.")
        expect(form_property(page, "Pinned revision")).to_contain_text(
            "A full commit SHA to apply instead of resolving the ref")
        expect(form_property(page, "Write concurrency").get_by_role("spinbutton")).to_have_value("4")

        drift = form_property(page, "Drift mode")
        expect(drift).to_contain_text("correct: revert values changed outside Git; warn: report only")
        select = drift.locator("button.p-select-button__control")
        expect(select).to_have_text("from-file")
        # the select's pop-over opens from the keyboard; a mouse click (even a real one) leaves it shut
        select.focus()
        page.keyboard.press("ArrowDown")
        expect(page.get_by_role("listbox").get_by_role("option")).to_have_text(["from-file", "correct", "warn"])
        page.keyboard.press("Escape")
        expect(page.get_by_role("listbox")).to_have_count(0)
        expect(select).to_have_text("from-file")

        dry_run = form_property(page, "Dry run").get_by_role("switch")
        expect(dry_run).to_have_attribute("aria-checked", "false")
        dry_run.click()
        expect(dry_run).to_have_attribute("aria-checked", "true")
        screenshot(page, "ui-run-form.png")

    with step(page, "submit"):
        # SQLite answers 503 while the event persister holds its write lock; the Prefect client retries
        # that, the UI shows an error and keeps the form: submit again, as a user would
        for _ in range(3):
            with page.expect_response(lambda r: r.request.method == "POST" and r.url.endswith(
                    f"/deployments/{deployment.id}/create_flow_run")) as created:
                page.get_by_role("button", name="Submit", exact=True).click()
            response = created.value
            if response.status != 503:
                break
            page.wait_for_timeout(2500)
        assert response.ok, f"create_flow_run answered {response.status}: {response.text()[:2000]}"
        submitted = response.json()
        assert submitted["parameters"]["dry_run"] is True, submitted["parameters"]
        page.wait_for_url(re.compile(rf"/deployments/deployment/{deployment.id}(\?|$)"))

    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    deadline = time.monotonic() + RUN_TIMEOUT_S
    run = None
    with sync_client() as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                                         sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=50)
            dry = sorted((r for r in runs if r.parameters.get("dry_run") is True), key=lambda r: r.created, reverse=True)
            run = dry[0] if dry else None
            if run is not None and run.state_type is not None and run.state_type.value in FINAL:
                break
            time.sleep(2)
    assert run is not None, f"no dry-run flow run of {DEPLOYMENT} appeared\n{worker_log()}"
    assert str(run.id) == submitted["id"], (run.id, submitted["id"])
    assert run.state_type is not None and run.state_type.value == "COMPLETED", (
        f"flow run {run.name} ({run.id}) is {run.state_name}: {run.state.message if run.state else ''}\n{worker_log()}")
    assert run.parameters["dry_run"] is True and run.parameters["environment"] == "qa", run.parameters

    # the dry run wrote nothing: what a reconcile of qa could write is as it was before the form was sent
    # (and no other reconcile ran meanwhile: any change is the dry run's)
    after = server_record(control_plane)
    runs_after = reconcile_runs()
    # (a scheduled run of another module's control plane turning Late never started: it wrote nothing)
    meanwhile = {i: state for i, state in runs_after.items()
                 if i != submitted["id"] and runs_before.get(i) != state and state not in ("Scheduled", "Late")}
    assert not meanwhile and submitted["id"] not in runs_before, (runs_before, runs_after)
    for what in before:
        assert after[what] == before[what], f"the dry run wrote {what}: before {before[what]!r}, after {after[what]!r}"

    # and its outcome is the documented one: status planned, every change of the plan not applied
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    with sync_client() as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["gitops-qa"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    assert len(artifacts) == 1, artifacts
    artifact = artifacts[0]
    assert artifact.description == "prefect-gitops reconcile of qa: planned"
    report = artifact.data
    assert "**Outcome:** Planned only (dry run): nothing was written  \n" in report, report
    rows = [m.groups() for m in map(PLAN_ROW.match, report.splitlines()) if m]
    assert rows and {row[-1] for row in rows} == {"not applied"}, report
    queue = f"{control_plane.pool}/prefect-gitops"
    # `prefect deploy` created the control queue (the deployments' work_queue_name) with the next free
    # priority and no limit; qa's control_queue wants priority 1 and limit 2
    assert ("prefect-gitops", 2, None, False) in before["queues"], before["queues"]
    assert sorted(row[:6] for row in rows if row[1] in (control_plane.workload, queue)) == [
        ("deployment", control_plane.workload, "image", "(absent)", '"flows:qa-1"', "desired"),
        ("work_queue", queue, "concurrency_limit", "null", "2", "desired"),
        ("work_queue", queue, "priority", "2", "1", "desired"),
    ], report
    # anything else in the plan is a key an earlier test's qa file had applied (same server, same env),
    # in qa's recorded inventory and no longer in Git
    recorded = before.get(f"gitops-{control_plane.env}")
    inventory = recorded[2]["state"]["inventory"] if recorded else {}
    others = [row for row in rows if row[1] not in (control_plane.workload, queue)]
    assert all(row[5].endswith("(removed from Git)") and row[2] in inventory.get(f"{row[0]}s", {}).get(row[1], {})
               for row in others), (report, inventory)
    assert f"**Message:** {len(rows)} change(s) pending in 1 wave(s), 0 smoke test(s) to run\n" in report, report

    with step(page, "flow-run-page", worker_log):
        page.goto(f"{ui_url()}/runs/flow-run/{run.id}", wait_until="domcontentloaded")
        expect(page.get_by_text(run.name, exact=True).first).to_be_visible()
        expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
        expect(page.get_by_text("reconcile-qa", exact=True).first).to_be_visible()
        tabs = page.get_by_role("tablist")  # the tabs are <li>s without role="tab"
        tabs.get_by_text("Artifacts", exact=True).click()
        # the dry run's plan artifact, with the status in its description
        expect(page.get_by_text("prefect-gitops reconcile of qa: planned")).to_be_visible()
        screenshot(page, "ui-flow-run-completed.png")
        tabs.get_by_text("Parameters", exact=True).click()
        expect(page.get_by_text('"dry_run": true')).to_be_visible()
        expect(page.get_by_text('"environment": "qa"')).to_be_visible()
        screenshot(page, "ui-flow-run-parameters.png")


def test_failure_evidence_names_the_files(page):
    """The failure path itself: a missing element fails with a screenshot and HTML on disk."""
    page.set_content("<h1>nothing here</h1>")
    with pytest.raises(AssertionError) as failed:
        with step(page, "self-check"):
            expect(page.get_by_text("Custom run")).to_be_visible(timeout=500)
    message = str(failed.value)
    png = Path(re.search(r"screenshot: (\S+)", message).group(1))
    html = Path(re.search(r"html: (\S+)", message).group(1))
    try:
        assert png.stat().st_size > 0 and "nothing here" in html.read_text()
    finally:
        png.unlink(missing_ok=True)
        html.unlink(missing_ok=True)
