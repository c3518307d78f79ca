"""rlm_rs: Recursive Language Models with a native engine (the rlm project's Rust core).

    from rlm_rs import RLM
    rlm = RLM("gpt-4o", "gpt-4o-mini", max_iterations=10)
    result = rlm.completion(context=open("book.txt").read(), query="Who is the narrator?")
    print(result.answer, result.usage)

`RLM(...).completion(context, query)` / `await RLM(...).acompletion(...)` return a `Result`;
`batch_completion(prompts, model)` / `await abatch_completion(...)` send plain prompts,
bounded, ordered, paced, retried and cached. Errors are `RlmError` subclasses named after
`rlm --json`'s error kinds. See help(RLM) and help(batch_completion).
"""

from . import _rlm_rs
from ._rlm_rs import (
    AuthError,
    BudgetError,
    InputError,
    Result,
    RlmError,
    ServerError,
    UsageError,
    __version__,
    batch_completion,
)

__all__ = [
    "RLM",
    "Result",
    "RlmError",
    "UsageError",
    "InputError",
    "ServerError",
    "AuthError",
    "BudgetError",
    "batch_completion",
    "abatch_completion",
    "__version__",
]


class RLM(_rlm_rs._RLM):
    __doc__ = _rlm_rs._RLM.__doc__

    async def acompletion(self, context, query):
        """`await rlm.acompletion(context, query)`: `completion` as a coroutine of the running
        event loop (asyncio; Jupyter's too). The loop goes on while the engine works;
        cancelling the awaiting task cancels the run and its in-flight sub-calls."""
        return await super().acompletion(context, query)


async def abatch_completion(prompts, model, **kwargs):
    """`await abatch_completion(prompts, model, ...)`: `batch_completion` as a coroutine of
    the running event loop; cancelling the awaiting task cancels the batch."""
    return await _rlm_rs.abatch_completion(prompts, model, **kwargs)


RLM.__module__ = "rlm_rs"
