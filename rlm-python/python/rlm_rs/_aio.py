"""How the engine calls Python tools and backends (internal).

The engine calls `call` on one of its worker threads. A sync callable runs right there; an
async one's coroutine runs on rlm_rs's own event-loop thread, so it works whether the caller
is blocked in `completion` (even inside a running loop, as in Jupyter) or awaiting
`acompletion`.
"""

import asyncio
import inspect
import threading

_loop = None
_lock = threading.Lock()


def _background_loop():
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(
                target=loop.run_forever, name="rlm_rs-asyncio", daemon=True
            )
            thread.start()
            _loop = loop
        return _loop


async def _await(awaitable):
    return await awaitable


def call(fn, args):
    """Calls fn(*args); an awaitable result is awaited on rlm_rs's event-loop thread."""
    value = fn(*args)
    if inspect.isawaitable(value):
        future = asyncio.run_coroutine_threadsafe(_await(value), _background_loop())
        return future.result()
    return value
