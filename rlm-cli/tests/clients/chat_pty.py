"""Drives `rlm chat` through a pseudo-terminal, as a person at a terminal would.

argv: the rlm binary, then its arguments. Asks "count words" (the scripted root sets the
variable `words`), asks "slow one" and presses Ctrl-C until rlm says it cancels the question,
asks "second word" (the root reads `words` from the first question), then presses Ctrl-D and
checks that rlm exits with status 0. Every wait is for text to appear (a safety bound, not a
timing assertion).
"""

import os
import pty
import select
import sys
import time

SAFETY = 120.0


def main() -> None:
    argv = sys.argv[1:]
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(argv[0], argv)
    seen = bytearray()

    def read_until(text: bytes, start: int, poke=None) -> int:
        """Reads until `text` appears after `start`; calls `poke` every half second."""
        deadline = time.monotonic() + SAFETY
        last_poke = 0.0
        while True:
            found = seen.find(text, start)
            if found >= 0:
                return found + len(text)
            if time.monotonic() > deadline:
                raise SystemExit(f"never saw {text!r}; output so far:\n{seen.decode(errors='replace')}")
            if poke is not None and time.monotonic() - last_poke > 0.5:
                poke()
                last_poke = time.monotonic()
            ready, _, _ = select.select([fd], [], [], 0.1)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    chunk = b""
                if not chunk:
                    raise SystemExit(f"rlm closed the terminal; output:\n{seen.decode(errors='replace')}")
                seen.extend(chunk)

    at = read_until(b"rlm> ", 0)
    os.write(fd, b"count words\r")
    at = read_until(b"count=3", at)
    at = read_until(b"rlm> ", at)
    os.write(fd, b"slow one\r")
    at = read_until(b"cancelling the question", at, poke=lambda: os.write(fd, b"\x03"))
    at = read_until(b"rlm> ", at)
    os.write(fd, b"second word\r")
    at = read_until(b"second=beta", at)
    at = read_until(b"rlm> ", at)
    os.write(fd, b"\x04")
    # Drain until rlm closes the terminal, then collect its status.
    deadline = time.monotonic() + SAFETY
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen.extend(chunk)
    _, status = os.waitpid(pid, 0)
    text = seen.decode(errors="replace")
    print(text)
    if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
        raise SystemExit(f"rlm chat did not exit 0: status {status}")
    if "panicked" in text:
        raise SystemExit("rlm panicked")


if __name__ == "__main__":
    main()
