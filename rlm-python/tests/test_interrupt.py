"""Ctrl-C (KeyboardInterrupt) during completion cancels the run and its in-flight
sub-calls: the mock sees them dropped."""

import _thread
import threading
import time

import pytest

import rlm_rs
from conftest import mock_stats


def wait_for(predicate, what, bound=60.0):
    # A safety bound against a hang, not a timing assertion.
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)


def test_keyboard_interrupt_cancels_the_run_and_its_sub_calls(base_url):
    rlm = rlm_rs.RLM("root-slow", "slow-sub", base_url=base_url, max_retries=0)

    def interrupt_when_in_flight():
        wait_for(lambda: mock_stats(base_url)["slow_started"] >= 3, "the sub-calls to start")
        _thread.interrupt_main()

    threading.Thread(target=interrupt_when_in_flight, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        rlm.completion("c", "q")
    # The three sub-calls (answers due in 300 s) were dropped: only this request is in flight.
    wait_for(lambda: mock_stats(base_url)["in_flight"] == 1, "the sub-calls to be dropped")
    assert mock_stats(base_url)["slow_started"] == 3
