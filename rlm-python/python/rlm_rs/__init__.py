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

from ._rlm_rs import (
    RLM,
    AuthError,
    BudgetError,
    InputError,
    Result,
    RlmError,
    ServerError,
    UsageError,
    __version__,
    abatch_completion,
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
