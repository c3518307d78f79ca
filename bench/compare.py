#!/usr/bin/env python3
"""End-to-end comparison: rlm (this project) against the seed's Python design and the
official Python library `rlms`, on the same task, against the same loopback server.

The task: one root call, then the context (2.4 MB by default) is split into 100 chunks that
go to a sub model 16 at a time, each sub-call taking 200 ms at the server. The ideal time is
one root call plus ceil(100 / 16) * 200 ms.

    python3 bench/compare.py                 # everything (builds rlm, makes bench/.venv)
    python3 bench/compare.py --runs 5 --latency-ms 100
    python3 bench/compare.py --only rlm      # skip the Python contenders

It is a benchmark, not a test: it prints measured times and ratios, and asserts nothing.
Nothing leaves 127.0.0.1. The Python contenders need `pip install rlms openai`, which the
script does in a virtual environment it creates (bench/.venv), from PyPI.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV = os.path.join(ROOT, "bench", ".venv")
SECRET = "the secret code is 7319"
KEY = "sk-bench-not-a-real-key"

# The root model's scripted first (and only) turn, per contender.
# The chunk size is worked out here: an integer division with a remainder in the script
# draws the REPL's lossy-division warning, and the answer would be held for a second turn.
RLM_ROOT = """I'll split the context and search every chunk in parallel.
```repl
let prompts = chunk(context, {size}).map(|c| "Return the line that gives the code, or none.\\n" + c);
let answers = llm_batch(prompts, {concurrency});
let hits = answers.filter(|a| a != "none");
FINAL(if hits.len() > 0 {{ hits[0] }} else {{ "not found" }});
```"""

RLMS_ROOT = """I'll split the context and search every chunk in parallel.
```repl
size = len(context) // {chunks} + 1
prompts = ["Return the line that gives the code, or none.\\n" + context[i:i + size] for i in range(0, len(context), size)]
answers = llm_query_batched(prompts)
hits = [a for a in answers if a != "none"]
answer["content"] = hits[0] if hits else "not found"
answer["ready"] = True
```"""

SEED_WORKER = r'''
import asyncio, math, sys, time
from openai import AsyncOpenAI

async def main(base_url, context_path, chunks, concurrency):
    started = time.perf_counter()
    client = AsyncOpenAI(base_url=base_url, api_key="%(key)s")
    await client.chat.completions.create(
        model="seed-root", messages=[{"role": "user", "content": "plan the search"}])
    context = open(context_path, encoding="utf-8").read()
    size = len(context) // chunks + 1
    prompts = ["Return the line that gives the code, or none.\n" + context[i:i + size]
               for i in range(0, len(context), size)]
    semaphore = asyncio.Semaphore(concurrency)

    async def one(prompt):
        async with semaphore:
            try:
                reply = await client.chat.completions.create(
                    model="sub", messages=[{"role": "user", "content": prompt}])
                return reply.choices[0].message.content
            except Exception as e:
                return f"Error: {e}"

    answers = await asyncio.gather(*(one(p) for p in prompts))
    hits = [a for a in answers if a != "none"]
    print(hits[0] if hits else "not found")
    print(f"inner_ms={(time.perf_counter() - started) * 1000:.0f}", file=sys.stderr)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
''' % {"key": KEY}

RLMS_WORKER = r'''
import sys, time
started = time.perf_counter()
from rlm import RLM
base_url, context_path = sys.argv[1], sys.argv[2]
context = open(context_path, encoding="utf-8").read()
rlm = RLM(
    backend="openai",
    backend_kwargs={"base_url": base_url, "api_key": "%(key)s", "model_name": "rlms-root"},
    other_backends=["openai"],
    other_backend_kwargs=[{"base_url": base_url, "api_key": "%(key)s", "model_name": "sub"}],
    max_iterations=3,
)
result = rlm.completion(context, root_prompt="What is the secret code?")
print(getattr(result, "response", result))
print(f"inner_ms={(time.perf_counter() - started) * 1000:.0f}", file=sys.stderr)
''' % {"key": KEY}


def log(message):
    print(message, file=sys.stderr, flush=True)


def build_rust():
    log("building rlm and mock-openai (release)...")
    subprocess.run(
        ["cargo", "build", "--release", "--quiet", "-p", "rlm-cli", "--bin", "rlm",
         "-p", "rlm-tests", "--bin", "mock-openai", "--bin", "http-floor"],
        cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "release", "rlm"), os.path.join(target, "release", "mock-openai")


def http_floor(mock, base_url, *args):
    """Runs `http-floor` (built beside `mock`) against `base_url`: the same traffic from a
    bare reqwest client. Returns (wall seconds, CPU seconds), or None when it is not built."""
    binary = os.path.join(os.path.dirname(mock), "http-floor")
    if not os.path.exists(binary):
        return None
    proc = subprocess.Popen([binary, base_url, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read().decode(), proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"http-floor failed: {err[-400:]}")
    return float(out), usage.ru_utime + usage.ru_stime


def venv_python():
    python = os.path.join(VENV, "bin", "python")
    if not os.path.exists(python):
        log(f"creating {VENV} ...")
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    probe = subprocess.run([python, "-c", "import openai, rlm"], capture_output=True)
    if probe.returncode != 0:
        log("installing rlms and openai into the virtual environment ...")
        subprocess.run([python, "-m", "pip", "install", "--quiet", "rlms", "openai"], check=True)
    return python


def chunk_size(context_path, chunks):
    """The characters per chunk that make `chunks` chunks of the (ASCII) context."""
    return os.path.getsize(context_path) // chunks + 1


def make_context(path, megabytes):
    words = ("river quiet ledger amber signal harbor copper window forest engine paper "
             "silver market garden winter orbit canvas thunder meadow lantern").split()
    target = int(megabytes * 1_000_000)
    lines, size, i = [], 0, 0
    while size < target:
        line = " ".join(words[(i * 7 + j * 3) % len(words)] for j in range(13))
        lines.append(line)
        size += len(line) + 1
        i += 1
    lines[len(lines) * 4 // 5] = SECRET
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


class Server:
    def __init__(self, binary, args):
        self.proc = subprocess.Popen([binary, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline().strip()
        if not first.startswith("listening on "):
            raise RuntimeError(f"mock-openai did not start: {first!r}")
        self.base_url = first.removeprefix("listening on ")

    def cpu_seconds(self):
        """User + system CPU the server has used so far (it shares the machine's cores with
        what it serves: a remote server would not)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def command(self, text):
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        if text == "stats":
            return json.loads(self.proc.stdout.readline())
        return None

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def add_task_arguments(parser, runs):
    """The needle task's flags, shared by the benchmarks that run it."""
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--chunks", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--root-latency-ms", type=int, default=200)
    parser.add_argument("--context-mb", type=float, default=2.4)


def timed(argv, env=None, stdin=None):
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, stdin=stdin)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    inner = None
    for line in proc.stderr.splitlines():
        if line.startswith("inner_ms="):
            inner = float(line.split("=", 1)[1]) / 1000
    return elapsed, inner, proc.stdout.strip()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_task_arguments(parser, runs=3)
    parser.add_argument("--only", choices=["rlm", "seed", "rlms"], action="append")
    parser.add_argument("--rlm", help="this rlm binary instead of building one (and "
                        "--mock, the mock-openai binary)")
    parser.add_argument("--mock")
    args = parser.parse_args()
    contenders = args.only or ["rlm", "seed", "rlms"]

    if args.rlm and args.mock:
        rlm_bin, server_bin = args.rlm, args.mock
    else:
        rlm_bin, server_bin = build_rust()
    python = venv_python() if set(contenders) & {"seed", "rlms"} else None

    with tempfile.TemporaryDirectory(prefix="rlm-compare-") as tmp:
        context = os.path.join(tmp, "context.txt")
        make_context(context, args.context_mb)
        scripts = {}
        for model, template in [("rlm-root", RLM_ROOT), ("rlms-root", RLMS_ROOT),
                                ("seed-root", "Searching.")]:
            path = os.path.join(tmp, f"{model}.json")
            with open(path, "w") as f:
                json.dump([template.format(chunks=args.chunks, concurrency=args.concurrency,
                                           size=chunk_size(context, args.chunks))], f)
            scripts[model] = path
        workers = {}
        for name, source in [("seed", SEED_WORKER), ("rlms", RLMS_WORKER)]:
            workers[name] = os.path.join(tmp, f"{name}_worker.py")
            with open(workers[name], "w") as f:
                f.write(textwrap.dedent(source))

        server = Server(server_bin, [
            "--latency-ms", str(args.latency_ms), "--root-latency-ms", str(args.root_latency_ms),
            "--sub-find", SECRET[:-4],
            *sum((["--root", f"{m}={p}"] for m, p in scripts.items()), []),
        ])
        env = dict(os.environ, OPENAI_API_KEY=KEY, OPENAI_BASE_URL=server.base_url)
        commands = {
            "rlm": [rlm_bin, "run", "--quiet", "--query", "What is the secret code?",
                    "--context", context, "--model", "rlm-root", "--sub-model", "sub",
                    "--max-concurrent", str(args.concurrency), "--base-url", server.base_url],
            "seed": [python, workers["seed"], server.base_url, context, str(args.chunks),
                     str(args.concurrency)],
            "rlms": [python, workers["rlms"], server.base_url, context],
        }
        ideal = (args.root_latency_ms
                 + math.ceil(args.chunks / args.concurrency) * args.latency_ms) / 1000
        rows = []
        try:
            for name in contenders:
                times, inners, peaks, requests, answer = [], [], [], [], ""
                for _ in range(args.runs):
                    server.command("reset")
                    before = server.command("stats")["requests"]
                    elapsed, inner, answer = timed(commands[name], env=env,
                                                   stdin=subprocess.DEVNULL)
                    stats = server.command("stats")
                    times.append(elapsed)
                    if inner is not None:
                        inners.append(inner)
                    peaks.append(stats["peak_in_flight"])
                    requests.append(stats["requests"] - before)
                rows.append((name, statistics.median(times), min(times),
                             statistics.median(inners) if inners else None,
                             max(peaks), max(requests), answer.splitlines()[-1][:40]))
                log(f"{name}: median {statistics.median(times):.3f} s")
        finally:
            server.close()

    print(f"\nTask: {args.chunks} chunks of a {args.context_mb} MB context, "
          f"{args.concurrency} at a time, {args.latency_ms} ms per sub-call, "
          f"{args.root_latency_ms} ms root call; {args.runs} runs each.")
    print(f"Ideal: {ideal:.3f} s\n")
    print(f"| contender | median wall (s) | best (s) | median / ideal | in-process (s) "
          f"| peak in flight | requests | answer |")
    print("|---|---|---|---|---|---|---|---|")
    labels = {"rlm": "rlm (this project)", "seed": "seed design (AsyncOpenAI + gather)",
              "rlms": "rlms (official Python library)"}
    for name, median, best, inner, peak, count, answer in rows:
        inner_text = f"{inner:.3f}" if inner is not None else "n/a"
        print(f"| {labels[name]} | {median:.3f} | {best:.3f} | {median / ideal:.3f} "
              f"| {inner_text} | {peak} | {count} | {answer} |")


if __name__ == "__main__":
    main()
