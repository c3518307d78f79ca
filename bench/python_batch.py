#!/usr/bin/env python3
"""`rlm_rs.batch_completion` against the seed's own Python design, on the same mock, same run.

N prompts (1,000 by default) to one model, C (50) at once, each answered after 200 ms by the
loopback mock server (`mock-openai --latency-ms 200`). The ideal wall time is
ceil(N / C) x 200 ms. The contenders, each in a fresh Python process, timed from just before
the batch to just after it (imports and start-up excluded):

- `rlm_rs.batch_completion(prompts, model, max_concurrent=C)` (the release wheel);
- the seed's design: `AsyncOpenAI` + `asyncio.gather` under an `asyncio.Semaphore(C)`, with
  the pinned `openai` package of the test environment.

Wall time, CPU time of the process (user + system) and the peak of requests in flight at the
server are printed per run, and the median over `--runs`.

    python3 bench/python_batch.py               # builds the release wheel and mock-openai
    python3 bench/python_batch.py --runs 5 -n 1000 -c 50 --latency-ms 200

It is a benchmark, not a test: it prints numbers and asserts nothing. Nothing leaves 127.0.0.1.
The Python is the test environment at target/venv-ci (`cargo test` makes it; so does .ci/run).
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import ROOT, Server, log  # noqa: E402

TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
VENV_PYTHON = os.path.join(ROOT, "target", "venv-ci", "bin", "python")

RLM_RS = textwrap.dedent("""
    import json, sys, time
    import rlm_rs
    base, n, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    prompts = [f"item {i}: summarise this line" for i in range(n)]
    cpu, wall = time.process_time(), time.perf_counter()
    answers = rlm_rs.batch_completion(prompts, "sub", max_concurrent=c, base_url=base,
                                      api_key="sk-bench", no_cache=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert len(answers) == n and not any(a.startswith("Error:") for a in answers), answers[:3]
    print(json.dumps({"wall": wall, "cpu": cpu}))
""")

SEED = textwrap.dedent("""
    import asyncio, json, sys, time
    from openai import AsyncOpenAI
    base, n, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    prompts = [f"item {i}: summarise this line" for i in range(n)]

    class AsyncOpenAIClient:
        # The seed's batch client: one AsyncOpenAI, gather under a semaphore, per-item errors.
        def __init__(self, max_concurrent):
            self.client = AsyncOpenAI(base_url=base, api_key="sk-bench", max_retries=3)
            self.semaphore = asyncio.Semaphore(max_concurrent)

        async def completion(self, prompt):
            async with self.semaphore:
                try:
                    response = await self.client.chat.completions.create(
                        model="sub", messages=[{"role": "user", "content": prompt}])
                    return response.choices[0].message.content
                except Exception as e:
                    return f"Error: {e}"

        async def batch_completion(self, prompts):
            return await asyncio.gather(*(self.completion(p) for p in prompts))

    async def main():
        client = AsyncOpenAIClient(c)
        cpu, wall = time.process_time(), time.perf_counter()
        answers = await client.batch_completion(prompts)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert len(answers) == n and not any(a.startswith("Error:") for a in answers), answers[:3]
        return wall, cpu

    wall, cpu = asyncio.run(main())
    print(json.dumps({"wall": wall, "cpu": cpu}))
""")


def build(skip):
    if not skip:
        log("building mock-openai and the rlm_rs wheel (release)...")
        subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "rlm-tests",
                        "--bin", "mock-openai"], cwd=ROOT, check=True)
        subprocess.run([os.path.join(os.path.dirname(VENV_PYTHON), "maturin"), "build",
                        "--release", "--quiet", "-m", os.path.join(ROOT, "rlm-python", "Cargo.toml"),
                        "--out", os.path.join(TARGET, "wheels-bench")],
                       cwd=ROOT, check=True,
                       env={**os.environ, "CARGO_TARGET_DIR": os.path.join(TARGET, "maturin")})
    wheels = sorted(f for f in os.listdir(os.path.join(TARGET, "wheels-bench")) if f.endswith(".whl"))
    site = os.path.join(TARGET, "wheels-bench", "site")
    subprocess.run([VENV_PYTHON, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "--no-deps", "--no-index", "--upgrade", "--target", site,
                    os.path.join(TARGET, "wheels-bench", wheels[-1])], check=True)
    return os.path.join(TARGET, "release", "mock-openai"), site


def run(script, mock, n, c, site):
    mock.command("reset")
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(script)
    try:
        out = subprocess.run([VENV_PYTHON, f.name, mock.base_url, str(n), str(c)],
                             env={**os.environ, "PYTHONPATH": site}, check=True,
                             capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    figures["peak"] = mock.command("stats")["peak_in_flight"]
    return figures


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=1000)
    parser.add_argument("-c", type=int, default=50)
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args()
    mock_bin, site = build(args.no_build)
    ideal = math.ceil(args.n / args.c) * args.latency_ms / 1000
    mock = Server(mock_bin, ["--latency-ms", str(args.latency_ms)])
    results = {"rlm_rs.batch_completion": [], "seed: AsyncOpenAI + semaphore": []}
    try:
        for i in range(args.runs):
            for name, script in [("rlm_rs.batch_completion", RLM_RS),
                                 ("seed: AsyncOpenAI + semaphore", SEED)]:
                figures = run(script, mock, args.n, args.c, site)
                results[name].append(figures)
                log(f"run {i + 1} {name}: wall {figures['wall']:.3f} s "
                    f"({figures['wall'] / ideal:.3f} x ideal), cpu {figures['cpu']:.3f} s, "
                    f"peak {figures['peak']}")
    finally:
        mock.close()
    print(f"\n{args.n} prompts, C = {args.c}, {args.latency_ms} ms per call: ideal {ideal:.3f} s\n")
    print("| contender | median wall | / ideal | median CPU | peak in flight |")
    print("|---|---|---|---|---|")
    for name, runs in results.items():
        wall = statistics.median(r["wall"] for r in runs)
        cpu = statistics.median(r["cpu"] for r in runs)
        peak = max(r["peak"] for r in runs)
        print(f"| {name} | {wall:.3f} s | {wall / ideal:.3f} | {cpu:.3f} s | {peak} |")


if __name__ == "__main__":
    main()
