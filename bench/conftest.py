"""What every suite of bench/ shares: the wall-clock budget.

``luser-fast bench --suite gpu`` (``make gpu-check``) gives its benchmark suites a deadline
(``LUSER_FAST_BENCH_DEADLINE``, seconds since the epoch): once it has passed, every case not
yet started skips with that reason, so a suite ends early and its recorded cases (each is
stored as soon as it is measured) stay in the run. Without the variable nothing changes.
"""
import pytest

from luser_fast.profile import harness


@pytest.fixture(autouse=True)
def _wall_clock_budget():
    if harness.past_deadline():
        pytest.skip("the wall-clock budget of this run is spent (LUSER_FAST_BENCH_DEADLINE)")
    yield
