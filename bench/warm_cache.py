#!/usr/bin/env python3
"""A rerun of the 100-chunk needle task (the task of bench/compare.py) answered from a warm
persistent cache: `--cache-dir` (SQLite on disk) and `--redis` (a redis-server this script
starts on a loopback port, when installed).

For each tier: a cold run (fresh cache: every sub-call reaches the server), then warm
reruns in new processes (the sub-calls are answered from the tier; only the root call
reaches the server). Prints wall times (whole process) and requests counted at the server.

    python3 bench/warm_cache.py               # 5 warm runs per tier
    python3 bench/warm_cache.py --runs 10 --latency-ms 200

A benchmark, not a test: it prints what it measured and asserts nothing. Nothing leaves
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
import compare  # noqa: E402  (the same task, server and helpers)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis():
    binary = shutil.which("redis-server")
    if binary is None:
        compare.log("redis-server not installed: skipping the Redis tier")
        return None, None
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return proc, f"redis://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.01)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    compare.add_task_arguments(parser, runs=5)
    args = parser.parse_args()

    rlm_bin, server_bin = compare.build_rust()
    redis, redis_url = start_redis()
    rows = []
    with tempfile.TemporaryDirectory(prefix="rlm-warm-") as tmp:
        context = os.path.join(tmp, "context.txt")
        compare.make_context(context, args.context_mb)
        script = os.path.join(tmp, "root.json")
        with open(script, "w") as f:
            json.dump([compare.RLM_ROOT.format(
                chunks=args.chunks, concurrency=args.concurrency,
                size=compare.chunk_size(context, args.chunks))], f)
        server = compare.Server(server_bin, [
            "--latency-ms", str(args.latency_ms), "--root-latency-ms", str(args.root_latency_ms),
            "--sub-find", compare.SECRET[:-4], "--root", f"rlm-root={script}"])
        env = dict(os.environ, OPENAI_API_KEY=compare.KEY)
        env.pop("RLM_CACHE_DIR", None)
        env.pop("RLM_REDIS_URL", None)
        base = [rlm_bin, "run", "--quiet", "--query", "What is the secret code?",
                "--context", context, "--model", "rlm-root", "--sub-model", "sub",
                "--max-concurrent", str(args.concurrency), "--base-url", server.base_url]
        tiers = [("none (in-memory only)", []),
                 ("disk (--cache-dir)", ["--cache-dir", os.path.join(tmp, "cache")])]
        if redis_url:
            tiers.append(("redis (--redis)", ["--redis", redis_url]))
        try:
            for name, flags in tiers:
                def one():
                    server.command("reset")
                    before = server.command("stats")["requests"]
                    elapsed, _, answer = compare.timed(base + flags, env=env,
                                                       stdin=subprocess.DEVNULL)
                    return elapsed, server.command("stats")["requests"] - before, answer
                cold, cold_requests, answer = one()
                warm = [one() for _ in range(args.runs)]
                rows.append((name, cold, cold_requests,
                             statistics.median(w[0] for w in warm), min(w[0] for w in warm),
                             max(w[1] for w in warm), answer.splitlines()[-1][:30]))
                compare.log(f"{name}: cold {cold:.3f} s, warm median "
                            f"{statistics.median(w[0] for w in warm):.3f} s")
        finally:
            server.close()
            if redis:
                redis.kill()
                redis.wait()

    print(f"\nTask: {args.chunks} chunks of a {args.context_mb} MB context, {args.concurrency} "
          f"at a time, {args.latency_ms} ms per sub-call, {args.root_latency_ms} ms root call; "
          f"1 cold run, then {args.runs} warm runs in new processes.\n")
    print("| cache tier | cold wall (s) | requests at the server | warm wall, median (s) "
          "| best (s) | requests at the server | answer |")
    print("|---|---|---|---|---|---|---|")
    for name, cold, cold_requests, warm, best, warm_requests, answer in rows:
        print(f"| {name} | {cold:.3f} | {cold_requests} | {warm:.3f} | {best:.3f} "
              f"| {warm_requests} | {answer} |")


if __name__ == "__main__":
    main()
