#!/usr/bin/env python3
"""`rlm serve` throughput and per-request latency, against the loopback mock server.

    python3 bench/serve.py            # builds in release, then measures
    python3 bench/serve.py --quick    # fewer requests

A one-turn run at zero model latency (the root model answers FINAL(ok) at once), so what is
measured is rlm's own cost: HTTP, the run's setup (REPL, prompt), one root call.
- requests per second of `rlm serve --max-runs 16` with 16 clients on keep-alive connections;
- the median latency of one request at a time through `rlm serve`, next to the median wall
  time of `rlm run` (a process per run, startup included) and the run's own `elapsed_ms`.

It is a benchmark, not a test: it prints numbers and asserts nothing. Nothing leaves 127.0.0.1.
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import Server, build_rust, log  # noqa: E402

BODY = json.dumps({"model": "rlm", "messages": [
    {"role": "user", "content": "a small document"},
    {"role": "user", "content": "What is it?"}]})


def post(conn):
    conn.request("POST", "/v1/chat/completions", BODY, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    total = 400 if args.quick else 2000
    serial = 50 if args.quick else 200
    rlm, mock_bin = build_rust()
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "root.json")
        with open(script, "w") as f:
            json.dump(["FINAL(ok)"], f)
        mock = Server(mock_bin, ["--root", f"root={script}"])
        serve = subprocess.Popen(
            [rlm, "serve", "--listen", "127.0.0.1:0", "--model", "root", "--base-url",
             mock.base_url, "--max-runs", "16", "--max-queue", "1000"],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env={**os.environ, "OPENAI_API_KEY": "sk-bench"})
        line = serve.stderr.readline()
        host, port = line.split("listening on http://")[1].split("/")[0].rsplit(":", 1)
        threading.Thread(target=lambda: serve.stderr.read(), daemon=True).start()

        # Warm up, then one request at a time.
        conn = http.client.HTTPConnection(host, int(port))
        for _ in range(20):
            post(conn)
        latencies = []
        for _ in range(serial):
            started = time.perf_counter()
            post(conn)
            latencies.append(time.perf_counter() - started)
        conn.close()

        # Throughput: 16 clients.
        clients = 16
        per_client = total // clients
        def worker():
            c = http.client.HTTPConnection(host, int(port))
            for _ in range(per_client):
                post(c)
            c.close()
        threads = [threading.Thread(target=worker) for _ in range(clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        rps = clients * per_client / elapsed
        serve.terminate()
        serve.wait(timeout=10)

        # rlm run, one process per run.
        walls, runs = [], []
        for _ in range(20 if args.quick else 50):
            started = time.perf_counter()
            out = subprocess.run(
                [rlm, "run", "--model", "root", "--base-url", mock.base_url, "--json",
                 "--quiet", "--query", "What is it?"],
                capture_output=True, text=True, check=True,
                env={**os.environ, "OPENAI_API_KEY": "sk-bench"})
            walls.append(time.perf_counter() - started)
            runs.append(json.loads(out.stdout)["elapsed_ms"])
        mock.close()

    ms = lambda s: f"{s * 1000:.2f} ms"
    print(f"rlm serve, 16 clients, {clients * per_client} one-turn requests: {rps:.0f} requests/s")
    print(f"rlm serve, one request at a time: median {ms(statistics.median(latencies))}, "
          f"p90 {ms(statistics.quantiles(latencies, n=10)[-1])}")
    print(f"rlm run (a process per run): median wall {ms(statistics.median(walls))}; "
          f"the run itself (elapsed_ms) median {statistics.median(runs)} ms")


if __name__ == "__main__":
    main()
