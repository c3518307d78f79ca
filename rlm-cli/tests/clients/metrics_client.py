"""Reads `rlm serve`'s GET /metrics with the `prometheus_client` package's parsers.

Usage: metrics_client.py BASE_URL SERVER_KEY   (BASE_URL ends in /v1)
Run after openai_client.py against the same server: its requests are what is counted.
Exits non-zero (an AssertionError or an exception) on any mismatch.
"""

import sys
import urllib.error
import urllib.request

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as text_families

base_url, key = sys.argv[1], sys.argv[2]
url = base_url.removesuffix("/v1") + "/metrics"

# Behind the server key, like the API.
try:
    urllib.request.urlopen(url)
    raise AssertionError("/metrics answered without the key")
except urllib.error.HTTPError as e:
    assert e.code == 401, e.code

request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})
with urllib.request.urlopen(request) as response:
    content_type = response.headers["Content-Type"]
    text = response.read().decode()
assert content_type.startswith("application/openmetrics-text"), content_type

families = {f.name: f for f in openmetrics_families(text)}
classic = {f.name for f in text_families(text)}
for name, kind in [
    ("rlm_http_requests", "counter"),
    ("rlm_http_request_duration_seconds", "histogram"),
    ("rlm_runs", "counter"),
    ("rlm_run_duration_seconds", "histogram"),
    ("rlm_runs_running", "gauge"),
    ("rlm_runs_queued", "gauge"),
    ("rlm_sub_calls", "counter"),
    ("rlm_failed_sub_calls", "counter"),
    ("rlm_model_calls", "counter"),
    ("rlm_tokens", "counter"),
    ("rlm_cost_usd", "counter"),
]:
    assert name in families, (name, sorted(families))
    assert families[name].type == kind, (name, families[name].type)
    assert name in classic, (name, sorted(classic))


def value(family, suffix="_total", **labels):
    for sample in families[family].samples:
        if sample.name == family + suffix and all(
            sample.labels.get(k) == v for k, v in labels.items()
        ):
            return sample.value
    return None


assert value("rlm_http_requests", code="200") >= 10, text
assert value("rlm_http_requests", code="400") >= 8, text
assert value("rlm_http_requests", code="401") >= 1, text
assert value("rlm_runs", outcome="final") >= 10, text
assert value("rlm_sub_calls") >= 10, text
assert value("rlm_tokens", model="root-model", kind="prompt") > 0, text
assert value("rlm_tokens", model="sub-model", kind="completion") > 0, text
assert value("rlm_cost_usd", model="root-model") > 0, text
assert value("rlm_runs_running", suffix="") == 0, text
count = value("rlm_http_request_duration_seconds", suffix="_count")
assert count is not None and count >= 20, text
print(f"metrics ok: {len(families)} families, {int(count)} requests timed")
