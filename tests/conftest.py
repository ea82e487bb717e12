"""
pytest's view of the tests: the fast tier.

C{make check} (C{pytest -m check}) runs the tests that need no real socket,
process or wall-clock wait, in under a minute: those of
L{SynchronousTestCase} classes that are not trial's asynchronous
L{TestCase} (no reactor runs under them, so they cannot wait on the
network), less the few such classes that start processes or build
packages (L{NOT_IN_MEMORY}) and less the property-based (Hypothesis) tests,
whose hundreds of examples each are for C{make test}.  C{make test} runs
everything.
"""

from __future__ import annotations

import pytest
from twisted.trial.unittest import SynchronousTestCase, TestCase

#: SynchronousTestCase classes that start processes or build packages, as
#: C{module::Class}: not in the fast tier.
NOT_IN_MEMORY = frozenset(
    {
        "test_admin::DashboardFileTests",
        "test_admin::StructureTests",
        "test_bench::SmokeTests",
        "test_bench::TLS13ReproTests",
        "test_check::CheckTests",
        "test_benchcluster::SpreadTests",
        "test_descriptors::ProcessTests",
        "test_faults::FanoutFaultTests",
        "test_faults::ProxyFaultTests",
        "test_heldmemory::ConnectionsTests",
        "test_heldmemory::SmokeTests",
        "test_packaging::ReadmeTests",
        "test_packaging::WheelTests",
        "test_project::NewsTests",
        "test_project::PreCommitTests",
        "test_soakplot::SoakPlotTests",
    }
)


def inMemory(item: pytest.Item) -> bool:
    """
    @return: Whether C{item} belongs to the fast tier.
    """
    cls = getattr(item, "cls", None)
    if cls is None or not issubclass(cls, SynchronousTestCase):
        return False
    if issubclass(cls, TestCase):
        # Trial's asynchronous TestCase runs the reactor.
        return False
    if getattr(getattr(item, "obj", None), "is_hypothesis_test", False):
        return False
    module = item.module.__name__.rsplit(".", 1)[-1]  # type: ignore[attr-defined]
    return f"{module}::{cls.__name__}" not in NOT_IN_MEMORY


def pytest_configure(config: pytest.Config) -> None:
    """
    Declare the C{check} marker.
    """
    config.addinivalue_line("markers", "check: the fast tier, in memory (make check)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """
    Mark the fast tier's tests with C{check} (before C{-m} selects).
    """
    for item in items:
        if inMemory(item):
            item.add_marker(pytest.mark.check)
