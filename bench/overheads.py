#!/usr/bin/env python3
"""The rlm binary's own overheads, measured end to end against the loopback mock server.

    python3 bench/overheads.py            # builds in release, then measures everything
    python3 bench/overheads.py --quick    # fewer repetitions

What it measures (every figure is a median over repetitions, on this machine):
- process start: `rlm --version`;
- a run with a tiny context and one root turn at zero latency (startup included), and the
  cost of each further turn;
- sub-calls per second at zero latency (a 10,000-prompt llm_batch, 100 at a time), with and
  without the cache layer;
- peak memory (max RSS) with 1,000 requests in flight;
- a 100 MB context: load, chunk into 1,000 pieces and build 1,000 prompts.

It is a benchmark, not a test: it prints numbers and asserts nothing. Nothing leaves 127.0.0.1.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import Server, build_rust, log  # noqa: E402

KEY = "sk-bench-not-a-real-key"


def run(argv, env=None):
    """Runs a command; returns (wall seconds, max RSS of that process in KiB, stdout)."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env,
                                stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:2]} failed ({proc.returncode}): {stderr[-400:]}")
    return elapsed, usage.ru_maxrss, stdout


def script(tmp, name, replies):
    path = os.path.join(tmp, f"{name}.json")
    with open(path, "w") as f:
        json.dump(replies, f)
    return f"{name}={path}"


def rlm_run(rlm, server, model, context, *extra, trace=None):
    argv = [rlm, "run", "--quiet", "--query", "q", "--context", context, "--model", model,
            "--sub-model", "sub", "--base-url", server.base_url, *extra]
    if trace:
        argv += ["--trace", trace]
    return run(argv, env=dict(os.environ, OPENAI_API_KEY=KEY))


def events(trace):
    with open(trace) as f:
        return [json.loads(line) for line in f]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    reps = 3 if args.quick else 7
    rlm, server_bin = build_rust()
    rows = []

    # 1. Process start.
    times = [run([rlm, "--version"])[0] for _ in range(reps * 5)]
    startup = statistics.median(times)
    rows.append(("process start (`rlm --version`)", f"{startup * 1000:.1f} ms"))

    with tempfile.TemporaryDirectory(prefix="rlm-overheads-") as tmp:
        tiny = os.path.join(tmp, "tiny.txt")
        with open(tiny, "w") as f:
            f.write("hello world\n")
        turns = 20
        roots = [
            script(tmp, "one-turn", ["FINAL(done)"]),
            script(tmp, "many-turns", ["```repl\nprint(1);\n```"] * turns + ["FINAL(done)"]),
            script(tmp, "zero-latency-batch", [
                "```repl\nlet prompts = range(10000).map(|i| \"question \" + i);\n"
                "let answers = llm_batch(prompts, 100);\nFINAL(answers.len());\n```"]),
            script(tmp, "in-flight", [
                "```repl\nlet prompts = range(1000).map(|i| \"question \" + i);\n"
                "let answers = llm_batch(prompts, 1000);\nFINAL(answers.len());\n```"]),
            script(tmp, "big-context", [
                "```repl\nlet chunks = chunk(context, context.len() / 1000 + 1);\n"
                "let prompts = chunks.map(|c| \"Summarize this part of the log:\\n\" + c);\n"
                "FINAL(prompts.len());\n```"]),
        ]
        server = Server(server_bin, sum((["--root", r] for r in roots), []))
        slow = Server(server_bin, ["--latency-ms", "2000",
                                   "--root", roots[3]])
        try:
            # 2. A tiny run, and the cost of a turn.
            one = statistics.median(rlm_run(rlm, server, "one-turn", tiny)[0] for _ in range(reps))
            many = statistics.median(
                rlm_run(rlm, server, "many-turns", tiny, "--max-iterations", "30")[0] for _ in range(reps))
            rows.append(("one-turn run, tiny context, zero latency", f"{one * 1000:.1f} ms"))
            rows.append(("each further root turn (print(1))",
                         f"{(many - one) / turns * 1000:.2f} ms"))

            # 3. Sub-calls per second at zero latency.
            for label, extra in [("with cache", []), ("--no-cache", ["--no-cache"])]:
                rates = []
                for i in range(reps):
                    trace = os.path.join(tmp, f"batch-{i}.jsonl")
                    rlm_run(rlm, server, "zero-latency-batch", tiny, *extra, trace=trace)
                    end = next(e for e in events(trace) if e["event"] == "batch_end")
                    rates.append(end["total"] / (end["elapsed_ms"] / 1000))
                rows.append((f"sub-calls/s at zero latency, 10,000 x 100 at a time ({label})",
                             f"{statistics.median(rates):,.0f}"))

            # 4. Peak memory with 1,000 requests in flight.
            slow.command("reset")
            wall, rss, _ = rlm_run(rlm, slow, "in-flight", tiny, "--max-concurrent", "1000")
            peak = slow.command("stats")["peak_in_flight"]
            rows.append(("peak RSS with 1,000 requests in flight",
                         f"{rss / 1024:.1f} MiB (server saw {peak} at once; run {wall:.2f} s)"
))

            # 5. A 100 MB context.
            big = os.path.join(tmp, "big.txt")
            line = "2026-11-27T03:58:27Z INFO worker=17 request handled in 12 ms status=200\n"
            with open(big, "w") as f:
                f.write(line * (100_000_000 // len(line)))
            loads, blocks, walls, rsses = [], [], [], []
            for i in range(max(3, reps // 2)):
                trace = os.path.join(tmp, f"big-{i}.jsonl")
                wall, rss, out = rlm_run(rlm, server, "big-context", big, trace=trace)
                evs = events(trace)
                loads.append(next(e for e in evs if e["event"] == "run_start")["t_ms"])
                blocks.append(next(e for e in evs if e["event"] == "code_block")["elapsed_ms"])
                walls.append(wall)
                if rss:
                    rsses.append(rss)
            rows.append(("100 MB context: start to run start (read + load)",
                         f"{statistics.median(loads):.0f} ms"))
            rows.append(("100 MB context: chunk into 1,000 + build 1,000 prompts (one block)",
                         f"{statistics.median(blocks):.0f} ms"))
            rows.append(("100 MB context: whole run, wall",
                         f"{statistics.median(walls) * 1000:.0f} ms"
                         + (f", peak RSS {max(rsses) / 1024:.0f} MiB" if rsses else "")))
        finally:
            server.close()
            slow.close()

    print("\n| measurement | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
