#!/usr/bin/env python3
"""What a document pasted into the question costs the root model, through `rlm serve`.

    python3 bench/inline.py            # builds in release, then measures
    python3 bench/inline.py --debug    # uses the debug binaries (cargo build first)

One 120 KB document and a question, sent three ways to `rlm serve` in front of the loopback
mock (whose usage counts four bytes a token): pasted into the one user message (the
default `--inline-max-bytes 16K` moves it into `context`), pasted with
`--inline-max-bytes 0` (the whole message in the root prompt, as before), and as the
server's `--context` file with only the question sent. The root model takes two turns (one
code block that prints `context.len()`, then FINAL) and makes no sub-call, so the reply's
`usage.prompt_tokens` is the root model's alone.

It is a measurement, not a test: it prints numbers and asserts nothing. Nothing leaves
127.0.0.1.
"""

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare import ROOT, Server, build_rust, log  # noqa: E402

QUESTION = "How many characters does this document have?"


def document(size):
    words = ("river quiet ledger amber signal harbor copper window forest engine paper "
             "silver market garden winter orbit canvas thunder meadow lantern").split()
    out, i = [], 0
    while sum(len(w) + 1 for w in out) < size:
        out.append(words[i % len(words)] + ("\n" if i % 12 == 11 else ""))
        i += 1
    return " ".join(out)[:size]


def ask(rlm, base_url, args, content):
    proc = subprocess.Popen(
        [rlm, "serve", "--listen", "127.0.0.1:0", "--model", "root", "--sub-model", "sub",
         "--base-url", base_url, *args],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, env={**os.environ, "OPENAI_API_KEY": "sk-mock"})
    try:
        address = None
        for line in proc.stderr:
            if "listening on " in line:
                address = line.split("listening on http://")[1].split("/")[0]
                break
        if address is None:
            raise RuntimeError("rlm serve did not start")
        host, port = address.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        body = json.dumps({"model": "rlm", "messages": [{"role": "user", "content": content}]})
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        reply = json.loads(conn.getresponse().read())
        return reply["usage"]["prompt_tokens"], reply["rlm"].get("moved_to_context", 0)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="use the debug binaries")
    parser.add_argument("--kb", type=int, default=120, help="document size in KB")
    args = parser.parse_args()
    if args.debug:
        target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        rlm = os.path.join(target, "debug", "rlm")
        mock = os.path.join(target, "debug", "mock-openai")
    else:
        rlm, mock = build_rust()
    text = document(args.kb * 1000)
    with tempfile.TemporaryDirectory() as tmp:
        script = os.path.join(tmp, "root.json")
        with open(script, "w") as f:
            json.dump(["```repl\nprint(context.len());\n```",
                       "FINAL(the count printed above)"], f)
        context = os.path.join(tmp, "doc.txt")
        with open(context, "w") as f:
            f.write(text)
        server = Server(mock, ["--root", f"root={script}"])
        try:
            rows = [
                ("pasted, --inline-max-bytes 16K (default)", [], f"{text}\n\n{QUESTION}"),
                ("pasted, --inline-max-bytes 0 (whole message in the prompt)",
                 ["--inline-max-bytes", "0"], f"{text}\n\n{QUESTION}"),
                ("--context FILE, only the question sent", ["--context", context], QUESTION),
            ]
            log(f"{len(text):,} bytes of document; root model prompt tokens over 2 turns:")
            for name, flags, content in rows:
                tokens, moved = ask(rlm, server.base_url, flags, content)
                print(f"{tokens:>9,}  {name} (messages moved to context: {moved})")
        finally:
            server.close()


if __name__ == "__main__":
    main()
