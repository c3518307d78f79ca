#!/usr/bin/env python3
"""`rlm batch` against the ideal, through the `rlm` binary, on the loopback mock server.

    python3 bench/batch.py            # builds in release, then measures everything
    python3 bench/batch.py --quick    # one repetition, fewer job counts

The workload (the issue's): N jobs, each one root turn that sends 10 sub-calls with one
`llm_batch` (C = 16 per job, so all 10 at once), each sub-call 200 ms at the server, the root
turn at zero latency; `--max-runs 100`. The ideal wall is N / 100 x 200 ms (1,000 jobs:
2.0 s): every run slot always busy with a sub-call wave, nothing else costing time.

It measures, each as a median over repetitions:
- one process, `rlm batch` for 1,000 jobs: wall (the whole process, as a user runs it:
  start, checking the job file, the runs, writing the results, the summary) against the
  ideal;
- memory: the process's peak RSS for 250, 1,000 and 4,000 jobs, with the in-memory sub-call
  cache (which keeps every distinct answer) and with `--no-cache` (what the runs hold: jobs
  are read as run slots free up, never all at once);
- four worker processes (`--max-runs 25` each) and a collector on one local redis-server:
  the collector's wall (enqueue to the last result) against the same ideal.

It is a benchmark, not a test: it prints numbers and asserts nothing. Nothing leaves
127.0.0.1.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import ROOT, Server, http_floor, log  # noqa: E402

KEY = "sk-bench-not-a-real-key"
SUB_MS = 200
MAX_RUNS = 100


def build():
    log("building rlm and mock-openai (release)...")
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "-p", "rlm-cli", "--bin", "rlm",
         "-p", "rlm-tests", "--bin", "mock-openai", "--bin", "http-floor"],
        cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "rlm"), os.path.join(target, "release", "mock-openai")


def run(argv, env):
    """Runs a command; returns (wall seconds, max RSS in KiB, stdout, CPU seconds)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if code != 0:
        raise RuntimeError(f"{argv[:2]} failed ({code}): {stderr[-600:]}")
    return elapsed, usage.ru_maxrss, stdout, usage.ru_utime + usage.ru_stime


def write_jobs(path, n, salt=""):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"j{i}", "query": "q",
                                "context": f"document {i}{salt}"}) + "\n")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-build", action="store_true",
                        help="use the release binaries already built")
    args = parser.parse_args()
    reps = 1 if args.quick else 3
    if args.no_build:
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        rlm, mock = (os.path.join(target, "release", name) for name in ("rlm", "mock-openai"))
    else:
        rlm, mock = build()
    env = dict(os.environ, OPENAI_API_KEY=KEY)
    for var in ["OPENAI_BASE_URL", "RLM_MODEL", "RLM_SUB_MODEL", "RLM_REDIS_URL", "RLM_CACHE_DIR"]:
        env.pop(var, None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="rlm-bench-batch-") as tmp:
        root = os.path.join(tmp, "root.json")
        with open(root, "w") as f:
            json.dump(["```repl\nlet prompts = range(10).map(|i| \"part \" + i + \" of \" + context);\n"
                       "let r = llm_batch(prompts, 16);\nFINAL(r.len());\n```"], f)
        server = Server(mock, ["--latency-ms", str(SUB_MS), "--root", f"root={root}"])
        common = ["--model", "root", "--sub-model", "sub", "--base-url", server.base_url,
                  "--max-concurrent", "16", "--quiet", "--json"]
        try:
            def batch(n, extra=(), rep=None):
                jobs = os.path.join(tmp, f"jobs-{n}{'' if rep is None else f'-{rep}'}.jsonl")
                if not os.path.exists(jobs):
                    write_jobs(jobs, n, "" if rep is None else f" (repetition {rep})")
                out = os.path.join(tmp, f"out-{n}.jsonl")
                if os.path.exists(out):
                    os.remove(out)
                wall, rss, stdout, cpu = run([rlm, "batch", jobs, "--output", out, *common, *extra],
                                             env)
                summary = json.loads(stdout)
                assert summary["answered"] == n, summary
                return wall, rss, cpu

            # 1. One process, 1,000 jobs.
            # Beside it, in turn with it, the same traffic from a bare HTTP client: what the
            # machine, the mock and the client reach without anything of rlm's.
            ideal = 1000 / MAX_RUNS * SUB_MS / 1000
            measured, floors = [], []
            for _ in range(reps):
                measured.append(batch(1000, ["--max-runs", str(MAX_RUNS)]))
                floor = http_floor(mock, server.base_url, "jobs", 1000, MAX_RUNS, 10)
                if floor is not None:
                    floors.append(floor)
            walls = [m[0] for m in measured]
            wall = statistics.median(walls)
            cpu = statistics.median(m[2] for m in measured)
            rows.append(("1,000 jobs, one process, --max-runs 100",
                         f"{wall:.2f} s (ideal {ideal:.2f} s: {wall / ideal:.2f}x; "
                         f"runs {min(walls):.2f}-{max(walls):.2f} s)"))
            rows.append(("CPU time of that process (user + system)", f"{cpu:.2f} s"))
            if floors:
                floor_wall = statistics.median(f[0] for f in floors)
                rows.append(("the same traffic from a bare reqwest client (`http-floor`)",
                             f"{floor_wall:.2f} s ({floor_wall / ideal:.2f}x the ideal; "
                             f"CPU {statistics.median(f[1] for f in floors):.2f} s); "
                             f"rlm batch over it: {wall / floor_wall:.2f}x"))
            else:
                rows.append(("bare HTTP client floor", "skipped: http-floor is not built"))

            # 2. Memory against the number of jobs.
            for n in ([250, 1000] if args.quick else [250, 1000, 4000]):
                rss = statistics.median(batch(n, ["--max-runs", str(MAX_RUNS)])[1]
                                        for _ in range(reps))
                rows.append((f"peak RSS, {n:,} jobs", f"{rss / 1024:.1f} MiB"))
            # The in-memory sub-call cache keeps every distinct answer (each job's prompts
            # differ here): without it, what remains is what the runs hold.
            for n in ([250, 1000] if args.quick else [250, 1000, 4000]):
                rss = statistics.median(batch(n, ["--max-runs", str(MAX_RUNS), "--no-cache"])[1]
                                        for _ in range(reps))
                rows.append((f"peak RSS, {n:,} jobs, --no-cache", f"{rss / 1024:.1f} MiB"))

            # 3. Four workers and a collector on one Redis.
            redis_bin = shutil.which("redis-server")
            if redis_bin is None:
                rows.append(("4 workers on one Redis", "skipped: redis-server not installed"))
            else:
                port = free_port()
                redis = subprocess.Popen([redis_bin, "--port", str(port), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "no"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                url = f"redis://127.0.0.1:{port}"
                deadline = time.time() + 10
                while True:
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                    except OSError:
                        if time.time() > deadline:
                            raise
                        time.sleep(0.05)
                workers = []
                try:
                    base = [a for a in common if a != "--json"]
                    workers = [subprocess.Popen([rlm, "worker", "--queue", url, "--max-runs", "25",
                                                 *base], env=env, stdin=subprocess.DEVNULL,
                                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                               for _ in range(4)]
                    # Workers outlive a batch, and with them their sub-call caches: each
                    # repetition's jobs are new, or the later ones would be answered from them.
                    walls = [batch(1000, ["--queue", url], rep=r)[0]
                             for r in range(reps)]
                    wall = statistics.median(walls)
                    rows.append(("1,000 jobs, 4 worker processes x --max-runs 25, one Redis",
                                 f"{wall:.2f} s (ideal {ideal:.2f} s: {wall / ideal:.2f}x; "
                                 f"runs {min(walls):.2f}-{max(walls):.2f} s)"))
                finally:
                    for worker in workers:
                        worker.terminate()
                    for worker in workers:
                        worker.wait(timeout=30)
                    redis.terminate()
                    redis.wait(timeout=10)
        finally:
            server.close()

    print("\n| measurement | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
