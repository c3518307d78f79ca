#!/usr/bin/env python3
"""`rlm serve` throughput and per-request latency, against the loopback mock server.

    python3 bench/serve.py            # builds in release, then measures
    python3 bench/serve.py --quick    # fewer requests

A one-turn run at zero model latency (the root model answers FINAL(ok) at once), so what is
measured is rlm's own cost: HTTP, the run's setup (REPL, prompt), one root call.
- requests per second of `rlm serve --max-runs 16` with 16 clients on keep-alive connections,
  from `wrk` (a C load generator: `apt-get install wrk`) when it is installed, and from 16
  Python threads (`http.client`) in any case. The Python client holds the GIL for each
  request and shares the 2 cores: it measures itself as much as the server;
- the median latency of one request at a time through `rlm serve`, next to the median wall
  time of `rlm run` (a process per run, startup included) and the run's own `elapsed_ms`.

It is a benchmark, not a test: it prints numbers and asserts nothing. Nothing leaves 127.0.0.1.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import ROOT, Server, build_rust, log  # noqa: E402

BODY = json.dumps({"model": "rlm", "messages": [
    {"role": "user", "content": "a small document"},
    {"role": "user", "content": "What is it?"}]})


def cpu_seconds(pid):
    """User + system CPU of a running process, from /proc (Linux); None elsewhere."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def post(conn):
    conn.request("POST", "/v1/chat/completions", BODY, {"Content-Type": "application/json"})
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {data[:200]!r}")


WRK_SCRIPT = """wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
"""


def wrk_load(wrk, url, script, seconds, pid):
    """16 connections from `wrk` for `seconds`: (requests/s, median ms, p99 ms, CPU us a
    request of the process `pid`)."""
    cpu_before = cpu_seconds(pid)
    out = subprocess.run([wrk, "-t2", "-c16", f"-d{seconds}s", "-s", script, "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    cpu_after = cpu_seconds(pid)
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"rlm serve failed requests under wrk:\n{out}")

    def ms(label):
        value, unit = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    requests = int(re.search(r"^\s*(\d+) requests in", out, re.M).group(1))
    rps = float(re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M).group(1))
    per = None
    if cpu_before is not None and cpu_after is not None:
        per = (cpu_after - cpu_before) / requests * 1e6
    return rps, ms("50%"), ms("99%"), per


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-build", action="store_true",
                        help="use the release binaries already built")
    parser.add_argument("--rlm", help="this rlm binary instead (implies --no-build for rlm)")
    args = parser.parse_args()
    total = 400 if args.quick else 2000
    serial = 50 if args.quick else 200
    if args.no_build or args.rlm:
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        rlm, mock_bin = (os.path.join(target, "release", name) for name in ("rlm", "mock-openai"))
    else:
        rlm, mock_bin = build_rust()
    rlm = args.rlm or rlm
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

        # Throughput from wrk, when installed: 2 warm-up seconds, then 3 runs of 5 s.
        wrk = shutil.which("wrk")
        wrk_runs = []
        if wrk:
            lua = os.path.join(tmp, "post.lua")
            with open(lua, "w") as f:
                f.write(WRK_SCRIPT % BODY)
            url = f"http://{host}:{port}/v1/chat/completions"
            wrk_load(wrk, url, lua, 2, serve.pid)
            wrk_runs = [wrk_load(wrk, url, lua, 3 if args.quick else 5, serve.pid)
                        for _ in range(1 if args.quick else 3)]

        # Throughput: 16 Python clients.
        clients = 16
        per_client = total // clients
        loaded = []
        def worker():
            c = http.client.HTTPConnection(host, int(port))
            mine = []
            for _ in range(per_client):
                t0 = time.perf_counter()
                post(c)
                mine.append(time.perf_counter() - t0)
            c.close()
            loaded.extend(mine)
        threads = [threading.Thread(target=worker) for _ in range(clients)]
        cpu_before = cpu_seconds(serve.pid)
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        cpu_after = cpu_seconds(serve.pid)
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
    if wrk_runs:
        for rps_w, median_w, p99_w, per_w in wrk_runs:
            cpu = f", CPU of rlm serve {per_w:.0f} us a request" if per_w is not None else ""
            print(f"rlm serve, wrk -c16: {rps_w:.0f} requests/s, latency median "
                  f"{median_w:.2f} ms, p99 {p99_w:.2f} ms{cpu}")
    else:
        print("rlm serve under wrk: skipped (wrk is not installed; apt-get install wrk)")
    print(f"rlm serve, 16 Python clients, {clients * per_client} one-turn requests: "
          f"{rps:.0f} requests/s")
    print(f"  latency under that load: median {ms(statistics.median(loaded))}, "
          f"p99 {ms(statistics.quantiles(loaded, n=100)[-1])}")
    if cpu_before is not None and cpu_after is not None:
        per = (cpu_after - cpu_before) / (clients * per_client)
        print(f"  CPU of the rlm serve process: {per * 1e6:.0f} us a request")
    print(f"rlm serve, one request at a time: median {ms(statistics.median(latencies))}, "
          f"p90 {ms(statistics.quantiles(latencies, n=10)[-1])}, "
          f"p99 {ms(statistics.quantiles(latencies, n=100)[-1])}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    print(f"rlm run (a process per run): median wall {ms(statistics.median(walls))}; "
          f"the run itself (elapsed_ms) median {statistics.median(runs)} ms")


if __name__ == "__main__":
    main()
