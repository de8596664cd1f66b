"""Issue 17: what a user sees of a job in the MLflow UI, checked in a real browser, and every host's
system metrics in the job's one run.

One 2-worker ``hvdtrain run`` job on 2 test hosts (torch digits with a tiny budget, the model
logged, system metrics sampled every 0.5 s) logs to a real ``mlflow server`` on the hosts' bridge.
Read back from MLflow's API: each host's CPU and memory under its own node id. Then headless
Chromium (Debian's, driven by Playwright) opens the run as a user would and reads the pages: the
parameters with the values MLflow holds, the loss and lr charts with every logged point (the
plotted data, and what the page fetched), the world_size metric, the logged model, and a system
chart per host. Screenshots of the pages are saved in ``$HVDTRAIN_SCREENSHOTS`` (default: the
test's temp dir); ``docs/mlflow-run-*.png`` in ``docs/tracking.md`` are these.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

from tests.conftest import require
from tests.launch import REPO
from tests.mlflow_server import MlflowServer
from tests.multihost import job_env, run, wait_clean

pytestmark = [pytest.mark.multihost, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
SAMPLING_S = "0.5"
PAGE_TIMEOUT_MS = (
    60_000  # the first page load compiles MLflow's JavaScript: ~10 s on an idle machine
)
SYSTEM_NAMES = ("cpu_utilization_percentage", "system_memory_usage_megabytes")


def browser_missing() -> str | None:
    """Why the browser test cannot run here, in one line; None when it can."""
    if not CHROMIUM.exists():
        return (
            f"{CHROMIUM} is missing: scripts/system-packages.sh test installs Debian's "
            "chromium (apt, as root)"
        )
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing: make install (requirements/dev.txt)"
    return None


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from apt, driven by Playwright (no browser of Playwright's own)."""
    require(browser_missing())
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: Chromium's sandbox refuses to run as root, which the tests are in CI.
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def job(module_test_hosts, tmp_path_factory):
    """The finished job: (host names, the server, the job's results, its MLflow run)."""
    hosts = module_test_hosts(2)
    h1, h2 = hosts.names
    root = tmp_path_factory.mktemp("dashboard")
    server = MlflowServer(root, host=f"10.77.{hosts.instance}.1")
    with pytest.MonkeyPatch.context() as env:
        # A UI opened at an address other than localhost: MLflow >= 3 refuses its pages' POST calls
        # (runs, logged models) from any origin it was not told about.
        env.setenv("MLFLOW_SERVER_CORS_ALLOWED_ORIGINS", server.uri)
        server.start()
    env = job_env(
        MLFLOW_TRACKING_URI=server.uri,
        MLFLOW_EXPERIMENT_NAME="dashboard",
        MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING="true",
        MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL=SAMPLING_S,
    )
    try:
        done = run(
            hosts,
            h1,
            "-np",
            "2",
            "-H",
            f"{h1}:1,{h2}:1",
            str(REPO / "torch_examples/digits.py"),
            "--train-samples",
            "600",
            "--batch-size",
            "16",
            "--epochs",
            "2",
            "--log-every",
            "5",
            "--seed",
            "1",
            "--log-model",
            "--results",
            "results.json",
            cwd=root,
            env=env,
            timeout=240,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        found = json.loads((root / "results.json").read_text())
        yield hosts.names, server, found, server.client().get_run(found["run_id"])
        wait_clean(hosts, [h1, h2], timeout=10)
    finally:
        server.stop()


def test_each_host_reports_its_system_metrics_under_its_node_id(job):
    names, server, _, run_ = job
    client = server.client()
    system = {key for key in run_.data.metrics if key.startswith("system/")}
    # no host missing, none unnamed
    assert {key.split("/")[1] for key in system} == set(names), sorted(system)
    for host in names:
        for name in SYSTEM_NAMES:
            history = client.get_metric_history(run_.info.run_id, f"system/{host}/{name}")
            # One monitor per host: samples 0, 1, 2, ... each once.
            assert sorted(m.step for m in history) == list(range(len(history))) and history, (
                host,
                name,
            )
            assert (
                all(m.value > 0 for m in history)
                if "memory" in name
                else all(m.value >= 0 for m in history)
            )


# Each chart card of a run page: its title -> the (x, y) of every plotly trace drawn in it.
CHARTS_JS = """() => Object.fromEntries(
    Array.from(document.querySelectorAll('[data-testid=experiment-view-compare-runs-card]'))
    .map(card => [card.innerText.split('\\n')[0].trim(),
        Array.from(card.querySelector('.js-plotly-plot')?.data || [])
        .map(trace => [Array.from(trace.x || []), Array.from(trace.y || [])])]))"""
# The rows of the overview table under the heading that starts with ``heading``: the cells' text.
TABLE_JS = """heading => Array.from(Array.from(document.querySelectorAll('h4'))
    .find(h => h.textContent.startsWith(heading))
    .parentElement.querySelectorAll('[role=row]'))
    .map(row => Array.from(row.querySelectorAll('[role=cell]')).map(cell => cell.innerText.trim()))
    .filter(cells => cells.length > 1)"""
# The overview's "Logged models" grid (ag-grid): each model's row as {column id: text}.
MODELS_JS = """() => Array.from(document.querySelectorAll('.ag-row')).map(row => Object.fromEntries(
    Array.from(row.querySelectorAll('[role=gridcell][col-id]'))
        .map(cell => [cell.getAttribute('col-id'), cell.innerText.trim()])))
    .filter(cells => cells.name)"""


@pytest.fixture
def screenshots(tmp_path) -> Path:
    where = Path(os.environ.get("HVDTRAIN_SCREENSHOTS", tmp_path))
    where.mkdir(parents=True, exist_ok=True)
    return where


def table(page, heading: str) -> list[list[str]]:
    """The rows of the overview's table under ``heading``, once it has any
    (each table loads on its own)."""
    page.wait_for_function(f"heading => ({TABLE_JS})(heading).length > 0", arg=heading, polling=250)
    return page.evaluate(TABLE_JS, heading)


def history_fetched(response) -> list[tuple[int, float]]:
    """The (step, value) points a chart's ``metrics/get-history-bulk-interval``
    call brought the page."""
    return sorted((m["step"], m["value"]) for m in response.json()["metrics"])


def test_the_run_page_shows_what_a_user_looks_for(browser, job, screenshots):
    names, server, found, run_ = job
    client, run_id = server.client(), run_.info.run_id
    params, metrics = run_.data.params, run_.data.metrics
    history = {
        key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        for key in ("loss", "lr", "world_size")
    }
    assert len(history["loss"]) >= 5 and params["world_size"] == "2"  # a job worth drawing
    [model] = [
        m
        for m in client.search_logged_models([run_.info.experiment_id])
        if m.source_run_id == run_id
    ]

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    page.goto(f"{server.uri}/#/experiments/{run_.info.experiment_id}/runs/{run_id}")
    page.get_by_text("Parameters (").wait_for()
    # the MLflow Assistant's panel (a UI on localhost)
    assistant = page.get_by_role("button", name="Close")
    if assistant.count():
        assistant.click()
    page.screenshot(path=screenshots / "mlflow-run-overview.png")

    # Overview: every parameter with MLflow's value, the metrics' latest values, the logged model.
    assert page.get_by_text(f"Parameters ({len(params)})").count() == 1
    shown = dict(table(page, "Parameters ("))
    assert shown == params
    assert {k: shown[k] for k in ("world_size", "global_batch_size", "scaled_lr")} == {
        "world_size": "2",
        "global_batch_size": "32",
        "scaled_lr": params["scaled_lr"],
    }
    latest = {cells[0]: cells[1] for cells in table(page, "Metrics (")}
    assert set(latest) == set(metrics)
    assert {k: float(latest[k]) for k in ("world_size", "lr", "loss")} == {
        k: history[k][-1][1] for k in ("world_size", "lr", "loss")
    }
    page.locator(".ag-row [col-id=name]").first.wait_for()
    models = page.evaluate(MODELS_JS)
    assert page.get_by_text("Logged models (1)").count() == 1 and len(models) == 1, models
    assert (models[0]["name"].split("\n")[-1], models[0]["status"].upper()) == (
        model.name,
        model.status.name,
    ), models

    # Model metrics: the loss and lr charts draw every logged point, world_size its one value.
    with (
        page.expect_response(
            lambda r: "get-history-bulk-interval" in r.url and "metric_key=loss&" in r.url
        ) as loss,
        page.expect_response(
            lambda r: "get-history-bulk-interval" in r.url and "metric_key=lr&" in r.url
        ) as lr,
    ):
        page.get_by_text("Model metrics", exact=True).first.click()
    fetched = {"loss": history_fetched(loss.value), "lr": history_fetched(lr.value)}
    assert fetched == {"loss": history["loss"], "lr": history["lr"]}
    page.wait_for_function(
        f"() => {{ const c = ({CHARTS_JS})(); return ['loss', 'lr', 'world_size'].every(k => "
        f"c[k]?.length); }}",
        polling=250,
    )
    charts = page.evaluate(CHARTS_JS)
    for key in ("loss", "lr"):
        assert charts[key] and all(sorted(zip(*trace)) == history[key] for trace in charts[key]), (
            key,
            charts[key],
        )
    # one bar: 2 workers
    assert [x for x, _ in charts["world_size"]] == [[2]] * len(charts["world_size"])
    page.screenshot(path=screenshots / "mlflow-run-metrics.png")

    # System metrics: a section per host, each with that host's metrics.
    page.get_by_text("System metrics", exact=True).first.click()
    page.locator(".js-plotly-plot").first.wait_for()
    lines = page.inner_text("body").split("\n")
    for host in names:
        count = sum(key.startswith(f"system/{host}/") for key in metrics)
        assert (
            f"system/{host}" in lines and lines[lines.index(f"system/{host}") + 1] == f"({count})"
        ), (host, count)
    page.screenshot(path=screenshots / "mlflow-run-system.png")
    print(f"\nscreenshots: {screenshots}")
