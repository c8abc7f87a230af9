"""Load on the real API server (bench/load_test.py): concurrent clients get their own results in FIFO
order, and checkpoint swaps do not grow memory.

The fast test is a small variant (4 clients x 2 jobs, a short soak); the full figures of the issue
(12 x 3 jobs, 50 generations, 20 swaps, RSS growth < 5%) are the `slow` test and `python bench/load_test.py`.
"""
from __future__ import annotations

import pytest

from bench import load_test


def _assert_correct(report: load_test.Report) -> None:
    assert not report.problems, report.problems
    assert len(report.latencies) == report.clients * report.jobs_per_client
    assert report.fifo_ok and report.regenerated_ok


def test_concurrent_clients_small(tmp_path):
    report = load_test.run(clients=4, jobs=2, steps=2, generations=4, swaps=3, data_dir=tmp_path)
    _assert_correct(report)
    assert report.soak_swaps == 3 and report.rss_end_mb > 0


@pytest.mark.slow
def test_concurrent_clients_and_soak_full(tmp_path):
    report = load_test.run(clients=12, jobs=3, steps=4, generations=50, swaps=20, data_dir=tmp_path)
    _assert_correct(report)
    assert report.rss_growth < 0.05, load_test.markdown(report, "tests/test_load.py")
