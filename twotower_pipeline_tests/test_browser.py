"""The operator's week in a real browser: `dagster dev` on 127.0.0.1 against the test's MongoDB,
Debian's headless Chromium driven by Playwright (never a browser download). From the UI: a
backfill of three flatten partitions, a retrain launched from its launchpad, the publish sensor
turned on; then the GraphQL API and MongoDB say the runs succeeded and the live embeddings changed.
Screenshots are kept under `.twotower/test-artifacts/browser/`. Skipped, saying so, where Chromium
or Playwright is missing (`make test` installs both where it can)."""

import shutil
from pathlib import Path

import pytest

from twotower_pipeline import offline, publishing
from twotower_pipeline.ingest.runtime_logs import write_runtime_logs
from twotower_pipeline.ingest.simulator import simulate_traffic
from twotower_pipeline.store import names
from twotower_pipeline.store.slices import SlicedCollection
from twotower_pipeline_tests.test_webserver import _graphql, _wait, dagster_dev

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ARTEFACTS = PROJECT_ROOT / ".twotower" / "test-artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
LAUNCH_FLAGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
                "--disable-sync"]
DAYS = "[2024-01-01...2024-01-03]"
RUNS = """query ($job: String!) { runsOrError(filter: {pipelineName: $job}) { ... on Runs { results {
  runId status tags { key value } } } } }"""
SENSOR = """query ($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) {
  ... on Sensor { sensorState { status } } } }"""


def _runs(port, job):
    return _graphql(port, RUNS, {"job": job})["data"]["runsOrError"]["results"]


def _all_done(port, job, at_least=1):
    """The job's runs when at least `at_least` exist and every one has finished; else None."""
    runs = _runs(port, job)
    if len(runs) < at_least or any(r["status"] not in ("SUCCESS", "FAILURE", "CANCELED") for r in runs):
        return None
    return runs


def test_an_operator_backfills_retrains_and_turns_on_publishing_from_the_ui(
        tmp_path, mongo_uri, database_prefix, store):
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: the browser test needs Debian's chromium package (make test installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (make install)")
    traffic = simulate_traffic(n_customers=150, n_offers=15, n_requests=2000, days=3, seed=11)
    write_runtime_logs(store, traffic.logs)
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    live_before = publishing.live_run_id(store)

    with dagster_dev(tmp_path, mongo_uri, database_prefix, TWOTOWER_PARTITIONS_START="2024-01-01") as (port, name):
        base = f"http://127.0.0.1:{port}"
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=LAUNCH_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})

            def shot(step: str):
                page.screenshot(path=str(ARTEFACTS / f"{step}.png"))

            # the UI's one-time welcome dialog, whenever it shows, is dismissed before the next action
            page.add_locator_handler(page.get_by_text("Join the Dagster community"),
                                     lambda: page.get_by_role("button", name="Skip").click())

            try:
                # 1. a backfill of three flatten days, from the asset's page
                page.goto(f"{base}/assets/logging/ecosystemruntime_flatten")
                page.get_by_role("button", name="Materialize…").wait_for(timeout=60_000)
                # the welcome dialog shows a few seconds after the first page: dismissed before any
                # dialog of ours opens (dismissing it then would close ours too)
                try:
                    page.get_by_role("button", name="Skip").click(timeout=20_000)
                except sync_api.TimeoutError:
                    pass
                page.get_by_role("button", name="Materialize…").click()
                page.get_by_role("button", name="Confirm").click()  # the quarantine comes with it
                page.get_by_text("Show all partitions").click()
                selection = page.locator("[role=dialog] input[type=text]").first
                selection.fill(DAYS)
                selection.press("Enter")
                page.get_by_text("3 partitions").first.wait_for(timeout=30_000)
                shot("1-backfill-dialog")
                page.get_by_role("button", name="Launch backfill").click()
                flatten_runs = _wait(lambda: _all_done(port, "__ASSET_JOB"), timeout=300)
                assert {r["status"] for r in flatten_runs} == {"SUCCESS"}, flatten_runs
                assert sorted(SlicedCollection(store, names.FLATTEN).committed_slices()) == [
                    "2024-01-01", "2024-01-02", "2024-01-03"]
                page.goto(f"{base}/assets/logging/ecosystemruntime_flatten?view=partitions")
                page.wait_for_timeout(2000)
                shot("2-flatten-partitions")

                # 2. a retrain, from retrain_job's launchpad
                page.goto(f"{base}/locations/{name}/jobs/retrain_job/playground")
                page.locator(".CodeMirror").first.wait_for(timeout=60_000)
                page.evaluate("""config => document.querySelector('.CodeMirror').CodeMirror.setValue(config)""",
                              f"predictor: {traffic.logs.predictor}\nrun_id: ui_run\nepochs: 12\nbatch_size: 128\n")
                shot("3-retrain-launchpad")
                page.get_by_role("button", name="Launch Run").click()
                [retrain] = _wait(lambda: _all_done(port, "retrain_job"), timeout=420)
                assert retrain["status"] == "SUCCESS", retrain
                assert offline.offline_metrics(store, "ui_run")["gate"]["passed"]
                assert publishing.live_run_id(store) == live_before  # gated, not yet published

                # 3. publishing turned on: the sensor publishes the gated run
                page.goto(f"{base}/automation")
                # the sensor's row in the list, and its on/off switch (a checkbox drawn as a switch)
                row = page.locator("[class*='ListItem_listItem']", has=page.get_by_text("publish_sensor", exact=True))
                switch = row.locator("label[class*='formatSwitch']")
                switch.wait_for(timeout=60_000)
                switch.click()
                selector = {"repositoryLocationName": name, "repositoryName": "__repository__",
                            "sensorName": "publish_sensor"}
                _wait(lambda: _graphql(port, SENSOR, {"selector": selector})["data"]["sensorOrError"]
                      ["sensorState"]["status"] == "RUNNING", timeout=60)
                shot("4-sensor-on")
                [published] = _wait(lambda: _all_done(port, "publish_job"), timeout=300)
                assert published["status"] == "SUCCESS", published
                assert publishing.live_run_id(store) == "ui_run" != live_before
                users = store.collection(publishing.USER_EMBEDDINGS)
                assert users.count_documents({"run_id": "ui_run"}) == len(traffic.logs.customer_features)
                page.goto(f"{base}/runs")
                page.wait_for_timeout(3000)
                shot("5-runs")
            finally:
                page.screenshot(path=str(ARTEFACTS / "last-page.png"))  # where it stopped, pass or fail
                browser.close()
