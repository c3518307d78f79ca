#!/usr/bin/env python3
"""The moonshot as a user runs it: the `rlm` release binary at default flags (memory
budget included) over a large text context, cut into 100 KB chunks made into prompts and
sent in one `llm_batch`, against the loopback Rust mock server with 1 s per sub-call.

    python3 bench/moonshot.py                  # 1 GB -> 10,000 sub-calls, C = 500
    python3 bench/moonshot.py --mb 256         # 256 MB -> 2,560 sub-calls
    python3 bench/moonshot.py --form variable  # `let parts = chunk(..); parts.map(..)`
    python3 bench/moonshot.py --flag=--max-memory --flag=1G   # the old default budget

The ideal is the load (start to the run's first event: reading the file and converting it
into the REPL's string) plus ceil(N / C) waves of the sub-call latency. Peak RSS is the
`rlm` process's (`ru_maxrss`, as `/usr/bin/time -v` reports it); the resident memory is
also sampled every 20 ms to say where the peak is (during the load, or during the block that
builds the prompts and sends them). The load average is printed with the result: the
machine is shared. It is a benchmark, not a test. Nothing leaves 127.0.0.1.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import Server, build_rust, log  # noqa: E402
from overheads import KEY, events  # noqa: E402

FORMS = {
    # The natural code, chained: the chunks are a temporary array.
    "chained": "let prompts = chunk(context, 100000).map(|c| \"Summarize this part:\\n\" + c);",
    # The same with the chunks kept in a variable: three copies of the context at the end.
    "variable": "let parts = chunk(context, 100000);\n"
                "let prompts = parts.map(|c| \"Summarize this part:\\n\" + c);",
}


def make_context(path, megabytes):
    """About `megabytes` million bytes of distinct numbered lines (no two chunks alike, so
    the cache saves no call)."""
    target = int(megabytes * 1_000_000)
    tail = "the quick brown fox jumps over the lazy dog while the logs roll by, status ok\n"
    written, line = 0, 0
    with open(path, "w") as f:
        while written < target:
            block = "".join(f"line {n:>10}: {tail}" for n in range(line, line + 100_000))
            block = block[: target - written]
            f.write(block)
            written += len(block)
            line += 100_000


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for row in f:
                if row.startswith("VmRSS:"):
                    return int(row.split()[1])
    except OSError:
        pass
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=1000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--latency-ms", type=int, default=1000)
    parser.add_argument("--form", choices=sorted(FORMS), default="chained")
    parser.add_argument("--flag", action="append", default=[],
                        help="an extra flag for `rlm run` (repeatable)")
    parser.add_argument("--rlm", help="this rlm binary instead of building one")
    parser.add_argument("--mock", help="this mock-openai binary instead of building one")
    parser.add_argument("--context", help="an existing context file (else one is generated)")
    args = parser.parse_args()
    if args.rlm and args.mock:
        rlm, mock = args.rlm, args.mock
    else:
        rlm, mock = build_rust()

    with tempfile.TemporaryDirectory(prefix="rlm-moonshot-") as tmp:
        context = args.context
        if not context:
            context = os.path.join(tmp, "context.txt")
            log(f"writing a {args.mb:g} MB context ...")
            make_context(context, args.mb)
        size = os.path.getsize(context)
        calls = -(-size // 100_000)
        waves = -(-calls // args.concurrency)
        code = (FORMS[args.form] + f"\nlet answers = llm_batch(prompts, {args.concurrency});\n"
                "FINAL(answers.filter(|a| a.starts_with(\"ok\")).len());")
        root = os.path.join(tmp, "root.json")
        with open(root, "w") as f:
            json.dump([f"```repl\n{code}\n```"], f)
        server = Server(mock, ["--latency-ms", str(args.latency_ms), "--root", f"root={root}"])
        trace = os.path.join(tmp, "trace.jsonl")
        argv = [rlm, "run", "--quiet", "--query", "q", "--context", context, "--model", "root",
                "--sub-model", "sub", "--base-url", server.base_url,
                "--max-concurrent", str(args.concurrency), "--trace", trace, *args.flag]
        samples = []
        try:
            load_before = os.getloadavg()
            started = time.perf_counter()
            with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
                proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                        env=dict(os.environ, OPENAI_API_KEY=KEY))
                done = threading.Event()

                def sample():
                    while not done.is_set():
                        kib = rss_kib(proc.pid)
                        if kib:
                            samples.append((time.perf_counter() - started, kib))
                        time.sleep(0.02)

                sampler = threading.Thread(target=sample, daemon=True)
                sampler.start()
                _, status, usage = os.wait4(proc.pid, 0)
                wall = time.perf_counter() - started
                done.set()
                sampler.join()
                out.seek(0)
                err.seek(0)
                answer, stderr = out.read().decode().strip(), err.read().decode()
            code_status = os.waitstatus_to_exitcode(status)
            stats = server.command("stats")
            mock_cpu = server.cpu_seconds()
        finally:
            server.close()
        load_after = os.getloadavg()
        evs = events(trace) if os.path.exists(trace) else []
        start = next((e["t_ms"] / 1000 for e in evs if e.get("event") == "run_start"), None)
        batch = next((e for e in evs if e.get("event") == "batch_end"), None)
        gib = 1 << 20
        print(f"context {size / 1e6:,.0f} MB ({size / (1 << 30):.3f} GiB), form {args.form}, "
              f"flags {' '.join(args.flag) or '(defaults)'}")
        print(f"exit status {code_status}; answer {answer!r} (of {calls} sub-calls); "
              f"server: {stats}")
        if code_status != 0 or answer != str(calls):
            print("NO ANSWER / WRONG ANSWER:", stderr.strip()[-600:])
        if start is not None:
            ideal = start + waves * args.latency_ms / 1000
            print(f"wall {wall:.2f} s; load {start:.2f} s; ideal {ideal:.2f} s "
                  f"(load + {waves} x {args.latency_ms} ms) -> {wall / ideal:.3f}x")
        if batch:
            print(f"batch: {batch.get('total')} calls in {batch.get('elapsed_ms')} ms")
        marks = [(e["event"], e["t_ms"]) for e in evs
                 if e.get("event") in ("run_start", "batch_start", "batch_end", "final")]
        print("timeline (ms from the start): " + ", ".join(f"{n} {t}" for n, t in marks))
        def at(seconds):
            """The resident memory sampled nearest to `seconds` after the start."""
            return min(samples, key=lambda s: abs(s[0] - seconds))[1] if samples else 0

        batch_start = next((e["t_ms"] / 1000 for e in evs if e.get("event") == "batch_start"),
                           None)
        if start is not None and batch_start is not None:
            print(f"resident: {at(start) / gib:.2f} GiB when loaded, {at(batch_start) / gib:.2f}"
                  f" GiB when the prompts were built and the batch started")
        peak_load = max((kib for t, kib in samples if start is None or t <= start), default=0)
        peak_rest = max((kib for t, kib in samples if start is not None and t > start),
                        default=0)
        print(f"cpu {usage.ru_utime:.2f} s user + {usage.ru_stime:.2f} s system (the rlm "
              f"process); the mock server {mock_cpu:.2f} s on the same cores")
        if start is not None and batch_start is not None and batch:
            end = next((e["t_ms"] / 1000 for e in evs if e.get("event") == "final"), None)
            print(f"phases: load {start:.2f} s, root turn + prompts {batch_start - start:.2f} s, "
                  f"batch {batch.get('elapsed_ms', 0) / 1000:.2f} s, "
                  f"answer to exit {wall - end:.2f} s" if end is not None else "")
        print(f"peak RSS {usage.ru_maxrss / gib:.2f} GiB (sampled: {peak_load / gib:.2f} GiB "
              f"during the load, {peak_rest / gib:.2f} GiB after it)")
        print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")


if __name__ == "__main__":
    main()
