#!/usr/bin/env python3
"""Self time of a `perf record` profile grouped by crate (or shared object), as a table.

    perf record -F 2000 -g -o perf.data -- rlm run ...
    python3 bench/perf_crates.py perf.data [--top 20]

A symbol's crate is the first path segment of its demangled name (`<rlm_cache::X as Y>` ->
`rlm_cache`); libc's allocator and memcpy, the kernel and the rest keep their object's name.
"""

import argparse
import collections
import re
import subprocess


def crate(dso, symbol):
    if "kernel" in dso:
        return "kernel"
    if dso.startswith("libc") or dso.startswith("ld-"):
        if re.search(r"malloc|free|realloc|memmove|memcpy|memset|_int_|unlink_chunk|tcache", symbol):
            return "libc: malloc, free, memcpy"
        return "libc: other"
    name = symbol.lstrip("<&*").removeprefix("mut ").removeprefix("dyn ")
    name = name.lstrip("<&*")
    head = re.split(r"::|<| ", name, maxsplit=1)[0]
    return head or dso


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    out = subprocess.run(
        ["perf", "report", "-i", args.data, "--no-children", "--sort", "dso,symbol",
         "--stdio", "-g", "none", "--percent-limit", "0"],
        capture_output=True, text=True, check=True).stdout
    totals = collections.Counter()
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[.\]\s+(.*?)\s*$", line)
        if m:
            totals[crate(m.group(2), m.group(3))] += float(m.group(1))
    print("| crate / object | self time |\n|---|---:|")
    for name, share in totals.most_common(args.top):
        print(f"| {name} | {share:.1f}% |")


if __name__ == "__main__":
    main()
