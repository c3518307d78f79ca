#!/usr/bin/env python3
"""The needle task against a Python aiohttp mock server: rlm against a raw aiohttp client.

One root call, then a 2.4 MB context split into 100 chunks that go to a sub model 16 at a
time, each sub-call taking 200 ms at the server (1 root turn + 100 x 200 ms, C = 16; ideal
0.2 + ceil(100 / 16) * 0.2 = 1.600 s). The server is an aiohttp application (not the Rust
`mock-openai`), as a Python user's local model server would be; the floor is a raw aiohttp
client doing the same calls with no framework at all, in the same run, against the same
server.

    python3 bench/aiohttp_needle.py               # builds rlm (release), makes the venv
    python3 bench/aiohttp_needle.py --runs 7 --rlm target/release/rlm

The server timestamps every request on arrival and on reply, so the report splits each
contender's time beyond the ideal into: process start to the root call's arrival, the root
reply to the first sub-call's arrival, the refill gaps (a sub-call's reply to the arrival of
the call that takes its place), the spread of the first wave, and the last reply to the
process's exit; with the TCP connections the process opened.

aiohttp (pinned in bench/requirements-aiohttp.txt) is installed into a virtual environment
under the target directory (`$CARGO_TARGET_DIR` or `target/`), from the package index.
It is a benchmark, not a test: it prints figures and asserts nothing. Nothing leaves
127.0.0.1.
"""

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REQUIREMENTS = os.path.join(HERE, "requirements-aiohttp.txt")
KEY = "sk-bench-not-a-real-key"
ROOT_MODEL = "rlm-root"


# ---------------------------------------------------------------------------------------
# The server (runs in the venv: `python aiohttp_needle.py _serve ...`).

def serve(argv):
    import asyncio
    from aiohttp import web

    parser = argparse.ArgumentParser()
    parser.add_argument("--latency-ms", type=int, default=200)
    parser.add_argument("--root-latency-ms", type=int, default=200)
    parser.add_argument("--root", action="append", default=[], help="MODEL=FILE")
    parser.add_argument("--sub-find", default=None)
    args = parser.parse_args(argv)
    roots = {}
    for spec in args.root:
        model, path = spec.split("=", 1)
        with open(path) as f:
            roots[model] = json.load(f)

    state = {"in_flight": 0, "peak": 0, "log": []}

    def completion(model, text):
        return {
            "id": "chatcmpl-mock", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }

    async def chat(request):
        arrived = time.monotonic()
        state["in_flight"] += 1
        state["peak"] = max(state["peak"], state["in_flight"])
        try:
            body = await request.json()
            model = body.get("model", "")
            messages = body.get("messages", [])
            if model in roots:
                turn = sum(1 for m in messages if m.get("role") == "assistant")
                script = roots[model]
                text = script[turn] if turn < len(script) else "FINAL(script exhausted)"
                await asyncio.sleep(args.root_latency_ms / 1000)
            else:
                prompt = next((m.get("content") or "" for m in reversed(messages)
                               if m.get("role") == "user"), "")
                if args.sub_find is not None:
                    text = next((line for line in prompt.splitlines()
                                 if args.sub_find in line), "none")
                else:
                    text = f"ok ({len(prompt)} chars)"
                await asyncio.sleep(args.latency_ms / 1000)
            response = web.json_response(completion(model, text))
            peer = request.transport.get_extra_info("peername") if request.transport else None
            state["log"].append({"model": model, "arrived": arrived, "replied": time.monotonic(),
                                 "port": peer[1] if peer else None})
            return response
        finally:
            state["in_flight"] -= 1

    async def commands():
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = (await reader.readline()).decode().strip()
            if line in ("", "quit"):
                return
            if line == "stats":
                stats = {"requests": len(state["log"]), "peak_in_flight": state["peak"],
                         "log": state["log"]}
                sys.stdout.write(json.dumps(stats) + "\n")
                sys.stdout.flush()
            elif line == "reset":
                state["peak"] = 0
                state["log"] = []

    async def main():
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        sys.stdout.write(f"listening on http://127.0.0.1:{port}/v1\n")
        sys.stdout.flush()
        await commands()
        await runner.cleanup()

    asyncio.run(main())


# ---------------------------------------------------------------------------------------
# The floor: a raw aiohttp client (runs in the venv: `python aiohttp_needle.py _client ...`).

def client(argv):
    import asyncio
    import aiohttp

    base_url, context_path, chunks, concurrency = argv[0], argv[1], int(argv[2]), int(argv[3])

    async def main():
        url = base_url + "/chat/completions"
        headers = {"Authorization": f"Bearer {KEY}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            async def call(model, prompt):
                body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
                async with session.post(url, json=body) as response:
                    reply = await response.json()
                    return reply["choices"][0]["message"]["content"]

            await call(ROOT_MODEL + "-floor", "plan the search")
            with open(context_path, encoding="utf-8") as f:
                context = f.read()
            size = len(context) // chunks + 1
            prompts = ["Return the line that gives the code, or none.\n" + context[i:i + size]
                       for i in range(0, len(context), size)]
            semaphore = asyncio.Semaphore(concurrency)

            async def one(prompt):
                async with semaphore:
                    return await call("sub", prompt)

            answers = await asyncio.gather(*(one(p) for p in prompts))
            hits = [a for a in answers if a != "none"]
            print(hits[0] if hits else "not found")

    asyncio.run(main())


# ---------------------------------------------------------------------------------------
# The driver (system python).

def venv_python():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    venv = os.path.join(target, "bench-venv-aiohttp")
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(python):
        log(f"creating {venv} ...")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    if subprocess.run([python, "-c", "import aiohttp"], capture_output=True).returncode != 0:
        log("installing aiohttp (bench/requirements-aiohttp.txt) into it ...")
        subprocess.run([python, "-m", "pip", "install", "--quiet", "-r", REQUIREMENTS],
                       check=True)
    return python


def log(message):
    print(message, file=sys.stderr, flush=True)


def aiohttp_server(python, args):
    """The aiohttp mock (this file's `_serve` mode, under the venv's Python), driven like
    `mock-openai`: `stats`, `reset`, `quit` on its stdin."""
    from compare import Server
    return Server(python, [os.path.abspath(__file__), "_serve", *args])


def timed_run(argv, env):
    """Runs a contender; returns (spawn instant, exit instant, rusage, stdout)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        ended = time.monotonic()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[0]} failed: {stderr.strip()[-500:]}")
    return started, ended, usage, stdout.strip()


def timeline(started, ended, entries, concurrency):
    """Splits one run's wall time using the server's arrival and reply instants."""
    roots = sorted((e for e in entries if e["model"] != "sub"), key=lambda e: e["arrived"])
    subs = [e for e in entries if e["model"] == "sub"]
    arrivals = sorted(e["arrived"] for e in subs)
    replies = sorted(e["replied"] for e in subs)
    root = roots[0]
    refills = [arrivals[k] - replies[k - concurrency] for k in range(concurrency, len(arrivals))]
    return {
        "wall": ended - started,
        "start_to_root": root["arrived"] - started,
        "root_service": root["replied"] - root["arrived"],
        "root_to_first_sub": arrivals[0] - root["replied"],
        "first_wave_spread": arrivals[min(concurrency, len(arrivals)) - 1] - arrivals[0],
        "refill_median": statistics.median(refills) if refills else 0.0,
        "refill_max": max(refills) if refills else 0.0,
        "sub_phase": replies[-1] - arrivals[0],
        # What the ideal describes: the root call's arrival to the last sub-call's reply.
        "span": replies[-1] - root["arrived"],
        "last_reply_to_exit": ended - replies[-1],
        "connections": len({e["port"] for e in entries}),
        "requests": len(entries),
    }


def main():
    sys.path.insert(0, HERE)
    from compare import (RLM_ROOT, SECRET, add_task_arguments, build_rust, chunk_size,
                         make_context)

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_task_arguments(parser, runs=5)
    parser.add_argument("--rlm", action="append",
                        help="an rlm binary (default: build the release one); twice or more "
                             "to compare binaries in the same run")
    args = parser.parse_args()

    rlm_bins = args.rlm or [build_rust()[0]]
    python = venv_python()
    ideal = (args.root_latency_ms
             + math.ceil(args.chunks / args.concurrency) * args.latency_ms) / 1000

    with tempfile.TemporaryDirectory(prefix="rlm-aiohttp-needle-") as tmp:
        context = os.path.join(tmp, "context.txt")
        make_context(context, args.context_mb)
        script = os.path.join(tmp, "root.json")
        with open(script, "w") as f:
            json.dump([RLM_ROOT.format(chunks=args.chunks, concurrency=args.concurrency,
                                       size=chunk_size(context, args.chunks))], f)
        server = aiohttp_server(python, [
            "--latency-ms", str(args.latency_ms), "--root-latency-ms", str(args.root_latency_ms),
            "--sub-find", SECRET[:-4], "--root", f"{ROOT_MODEL}={script}",
            "--root", f"{ROOT_MODEL}-floor={script}"])
        env = dict(os.environ, OPENAI_API_KEY=KEY)
        commands = {
            "aiohttp client (floor)": [python, os.path.abspath(__file__), "_client",
                                       server.base_url, context, str(args.chunks),
                                       str(args.concurrency)],
        }
        for rlm_bin in rlm_bins:
            name = "rlm" if len(rlm_bins) == 1 else f"rlm ({rlm_bin})"
            commands[name] = [
                rlm_bin, "run", "--quiet", "--query", "What is the secret code?",
                "--context", context, "--model", ROOT_MODEL, "--sub-model", "sub",
                "--max-concurrent", str(args.concurrency), "--base-url", server.base_url]
        results = {name: [] for name in commands}
        answers = {}
        try:
            # Interleaved, so that both see the same load.
            for _ in range(args.runs):
                for name, argv in commands.items():
                    server.command("reset")
                    started, ended, usage, answer = timed_run(argv, env)
                    entries = server.command("stats")["log"]
                    row = timeline(started, ended, entries, args.concurrency)
                    row["cpu"] = usage.ru_utime + usage.ru_stime
                    results[name].append(row)
                    answers[name] = answer.splitlines()[-1][:40] if answer else ""
        finally:
            server.close()

    load = os.getloadavg()
    print(f"\nTask: {args.chunks} chunks of a {args.context_mb} MB context, {args.concurrency} "
          f"at a time, {args.latency_ms} ms per sub-call, {args.root_latency_ms} ms root call, "
          f"aiohttp mock server; {args.runs} runs each, interleaved. Ideal {ideal:.3f} s. "
          f"Load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}.\n")
    columns = [
        ("median wall (s)", "wall", 1, "{:.3f}"),
        ("/ ideal", "wall", 1 / ideal, "{:.3f}"),
        ("root arrival to last reply / ideal", "span", 1 / ideal, "{:.3f}"),
        ("start to root arrival (ms)", "start_to_root", 1000, "{:.1f}"),
        ("root reply to first sub (ms)", "root_to_first_sub", 1000, "{:.1f}"),
        ("first wave spread (ms)", "first_wave_spread", 1000, "{:.1f}"),
        ("refill gap median / max (ms)", ("refill_median", "refill_max"), 1000, "{:.2f} / {:.2f}"),
        ("sub phase (s)", "sub_phase", 1, "{:.3f}"),
        ("last reply to exit (ms)", "last_reply_to_exit", 1000, "{:.1f}"),
        ("connections", "connections", 1, "{:.0f}"),
        ("CPU (s)", "cpu", 1, "{:.3f}"),
    ]
    print("| contender | " + " | ".join(c[0] for c in columns) + " | answer |")
    print("|---|" + "---|" * len(columns) + "---|")
    for name, rows in results.items():
        cells = []
        for _, key, scale, fmt in columns:
            keys = key if isinstance(key, tuple) else (key,)
            values = [statistics.median(r[k] for r in rows) * scale for k in keys]
            cells.append(fmt.format(*values))
        print(f"| {name} | " + " | ".join(cells) + f" | {answers[name]} |")
    walls = {name: statistics.median(r["wall"] for r in rows) for name, rows in results.items()}
    floor = walls.pop("aiohttp client (floor)")
    for name, wall in walls.items():
        print(f"\n{name} - floor: {(wall - floor) * 1000:.1f} ms (median walls)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        serve(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_client":
        client(sys.argv[2:])
    else:
        main()
