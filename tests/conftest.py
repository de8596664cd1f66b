"""Shared fixtures. Tests that need something this machine may lack (root for test hosts, ...) skip
with one line naming it, except in CI (``HVDTRAIN_CI=1``, set by ``.ci/run``), where they must run:
there a missing requirement fails the test instead of hiding it as a skip."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest

from hvdtrain.launch import testhosts


def require(reason: str | None) -> None:
    """Skip the test with ``reason`` (a requirement this machine lacks); a failure in CI."""
    if reason is None:
        return
    if os.environ.get("HVDTRAIN_CI") == "1":
        pytest.fail(f"CI must run this test, but {reason}", pytrace=False)
    pytest.skip(reason)


@contextlib.contextmanager
def _host_sets():
    require(testhosts.unavailable_reason())
    made: list[testhosts.TestHosts] = []

    def make(count: int, link_rate: str | None = None) -> testhosts.TestHosts:
        hosts = testhosts.TestHosts(count, link_rate=link_rate)
        made.append(hosts)
        return hosts.up()

    try:
        yield make
    finally:
        for hosts in made:
            hosts.down()


@pytest.fixture
def test_hosts():
    """``test_hosts(count, link_rate=None)``: that many separate hosts
    (``hvdtrain.launch.testhosts``), all removed when the test ends, whatever happened in it."""
    with _host_sets() as make:
        yield make


@pytest.fixture(scope="module")
def module_test_hosts():
    """``test_hosts`` kept for a whole test module,
    for tests that can share hosts (set-up paid once)."""
    with _host_sets() as make:
        yield make


MODULE_SECONDS = Path(__file__).with_name("module_seconds.json")


@pytest.hookimpl(trylast=True)  # after pytest groups the tests of a module-scoped fixture
def pytest_collection_modifyitems(config, items):
    """The longest modules first (``module_seconds.json``: each module's seconds in a 3-worker
    run): ``make test`` hands whole modules to parallel workers in this order, so no long module
    starts last while the other workers idle. A stale or missing figure only changes the order."""
    seconds = json.loads(MODULE_SECONDS.read_text())
    items.sort(key=lambda item: -seconds.get(Path(str(item.path)).name, 60))
