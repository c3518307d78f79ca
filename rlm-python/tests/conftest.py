"""Shared fixtures: the loopback mock model server the Rust test (tests/python.rs) started."""

import json
import os
import urllib.request

import pytest


@pytest.fixture
def base_url():
    url = os.environ.get("RLM_TEST_BASE_URL")
    if not url:
        pytest.fail("RLM_TEST_BASE_URL is not set: run these tests through cargo test")
    return url


def mock_stats(base_url):
    """The mock's counters: {"slow_started", "in_flight"} (this request counts in flight)."""
    body = json.dumps({"model": "__stats__", "messages": [{"role": "user", "content": "?"}]})
    request = urllib.request.Request(
        base_url + "/chat/completions",
        data=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        reply = json.load(response)
    return json.loads(reply["choices"][0]["message"]["content"])
