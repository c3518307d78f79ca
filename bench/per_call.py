#!/usr/bin/env python3
"""CPU per sub-call of the whole `rlm` process, at zero latency.

One `rlm run` whose root turn is one `llm_batch` of 10,000 distinct prompts, 100 at a time,
against the release `mock-openai` in its own process. For each run: the rlm process's CPU
(user + system, from getrusage: start-up and the root turn included) divided by the calls,
and the calls per second (calls over the whole process's wall time, start-up included; with
`--trace`, over the batch's own time from the trace's `batch_end`, the trace's writes then
counted in the CPU too). With `--strace`, one more run under `strace -c -f` counts the
process's system calls per call.

    python3 bench/per_call.py                      # builds in release first
    python3 bench/per_call.py --rlm /path/to/rlm --mock /path/to/mock-openai --runs 7
    python3 bench/per_call.py --rlm old/rlm --rlm new/rlm --mock ...   # interleaved runs
    python3 bench/per_call.py --strace             # and the syscalls per call

Also `--no-cache`, `--calls N`, `--concurrency N`. It is a benchmark, not a test: it prints
figures and asserts nothing. Nothing leaves 127.0.0.1.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import Server, build_rust, http_floor  # noqa: E402

KEY = "sk-bench-not-a-real-key"


def rlm_argv(rlm, server, context, trace, extra):
    return [rlm, "run", "--quiet", "--query", "q", "--context", context, "--model", "batch",
            "--sub-model", "sub", "--base-url", server.base_url,
            *(["--trace", trace] if trace else []), *extra]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--strace", action="store_true")
    parser.add_argument("--trace", action="store_true", help="write a trace; rate from batch_end")
    parser.add_argument("--rlm", action="append", help="a binary; twice or more to compare")
    parser.add_argument("--mock")
    args = parser.parse_args()
    if args.rlm and args.mock:
        binaries, mock = args.rlm, args.mock
    else:
        rlm, mock = build_rust()
        binaries = args.rlm or [rlm]
    extra = ["--max-concurrent", str(args.concurrency)] + (["--no-cache"] if args.no_cache else [])

    with tempfile.TemporaryDirectory(prefix="rlm-per-call-") as tmp:
        context = os.path.join(tmp, "tiny.txt")
        with open(context, "w") as f:
            f.write("hello world\n")
        script = os.path.join(tmp, "batch.json")
        with open(script, "w") as f:
            json.dump([f"```repl\nlet prompts = range({args.calls}).map(|i| \"question \" + i);\n"
                       f"let answers = llm_batch(prompts, {args.concurrency});\n"
                       f"FINAL(answers.len());\n```"], f)
        server = Server(mock, ["--root", f"batch={script}"])
        env = dict(os.environ, OPENAI_API_KEY=KEY)
        figures = {rlm: {"cpu": [], "rate": [], "wall": [], "syscalls": None} for rlm in binaries}
        # The same calls from a bare reqwest client, in turn with rlm: the HTTP client's floor.
        floors = []
        try:
            for i in range(args.runs):
                floor = http_floor(mock, server.base_url, "calls", args.calls, args.concurrency)
                if floor is not None:
                    floors.append(floor)
                # Interleaved: every binary sees the same load.
                for rlm in binaries:
                    row = figures[rlm]
                    trace = os.path.join(tmp, f"trace-{i}.jsonl") if args.trace else None
                    argv = rlm_argv(rlm, server, context, trace, extra)
                    started = time.perf_counter()
                    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.PIPE, env=env)
                    _, status, usage = os.wait4(proc.pid, 0)
                    wall = time.perf_counter() - started
                    if os.waitstatus_to_exitcode(status) != 0:
                        raise RuntimeError(f"rlm failed: {proc.stderr.read().decode()[-400:]}")
                    row["wall"].append(wall)
                    row["cpu"].append(usage.ru_utime + usage.ru_stime)
                    if trace:
                        with open(trace) as f:
                            end = next(e for e in map(json.loads, f)
                                       if e["event"] == "batch_end")
                        row["rate"].append(end["total"] / (end["elapsed_ms"] / 1000))
                    else:
                        row["rate"].append(args.calls / wall)
            if args.strace:
                for rlm in binaries:
                    trace = os.path.join(tmp, "trace-strace.jsonl") if args.trace else None
                    out = os.path.join(tmp, "strace.txt")
                    subprocess.run(["strace", "-c", "-f", "-o", out,
                                    *rlm_argv(rlm, server, context, trace, extra)],
                                   stdout=subprocess.DEVNULL, env=env, check=True)
                    with open(out) as f:
                        text = f.read()
                    total = re.search(r"^\s*100\.00\s+\S+\s+\S+\s+(\d+)\s+(\d+)?\s*total",
                                      text, re.M)
                    figures[rlm]["syscalls"] = int(total.group(1)) if total else None
                    print(f"== {rlm}\n{text}", file=sys.stderr)
        finally:
            server.close()

    load = os.getloadavg()
    print(f"{args.calls} calls, {args.concurrency} at a time"
          f"{', --no-cache' if args.no_cache else ''}{', --trace' if args.trace else ''}; "
          f"{args.runs} runs each; load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    rate_kind = "batch_end" if args.trace else "calls / process wall"
    for rlm, row in figures.items():
        per_call = [c / args.calls * 1e6 for c in row["cpu"]]
        print(f"\n{rlm}")
        print(f"  CPU per call (user+sys / calls): median {statistics.median(per_call):.1f} µs"
              f" (min {min(per_call):.1f}, max {max(per_call):.1f})")
        print(f"  calls/s ({rate_kind}): median {statistics.median(row['rate']):,.0f} "
              f"(min {min(row['rate']):,.0f}, max {max(row['rate']):,.0f})")
        print(f"  process wall: median {statistics.median(row['wall']):.3f} s")
        if row["syscalls"] is not None:
            print(f"  syscalls per call (strace -c -f, one run): {row['syscalls'] / args.calls:.2f}")
    if floors:
        per_call = [c / args.calls * 1e6 for _, c in floors]
        rates = [args.calls / w for w, _ in floors]
        print("\nhttp-floor (the same calls from a bare reqwest client, nothing of rlm's)")
        print(f"  CPU per call: median {statistics.median(per_call):.1f} µs"
              f" (min {min(per_call):.1f}, max {max(per_call):.1f})")
        print(f"  calls/s: median {statistics.median(rates):,.0f}")
    else:
        print("\nhttp-floor: skipped (not built beside the mock)")

if __name__ == "__main__":
    main()
