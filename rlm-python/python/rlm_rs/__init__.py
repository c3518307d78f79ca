"""rlm_rs: Recursive Language Models with a native engine (the rlm project's Rust core).

    from rlm_rs import RLM
    rlm = RLM("gpt-4o", "gpt-4o-mini", max_iterations=10)
    result = rlm.completion(context=open("book.txt").read(), query="Who is the narrator?")
    print(result.answer, result.usage)

`RLM(...).completion(context, query)` / `await RLM(...).acompletion(...)` return a `Result`;
`RLM(...).batch(jobs)` / `await RLM(...).abatch(jobs)` run JOBS.jsonl-style dicts, one
`Result` per job in order (a failed job's `Result` has `error`);
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
    "Session",
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

    async def acompletion(self, context, query, *, output_schema=None):
        """`await rlm.acompletion(context, query, output_schema=None)`: `completion` as a
        coroutine of the running event loop (asyncio; Jupyter's too). The loop goes on while
        the engine works; cancelling the awaiting task cancels the run and its in-flight
        sub-calls."""
        return await super().acompletion(context, query, output_schema=output_schema)

    async def abatch(self, jobs, *, max_runs=8):
        """`await rlm.abatch(jobs, max_runs=8)`: `batch` as a coroutine of the running event
        loop (one `Result` per job, in order). Cancelling the awaiting task cancels every
        job."""
        return await super().abatch(jobs, max_runs=max_runs)

    def session(self, context, *, output_schema=None):
        """A conversation over `context` (as for `completion`): `session.ask(query)` answers
        follow-up questions in one REPL scope (the variables of earlier questions are kept)
        and the root model is told the earlier questions and answers. `output_schema`, when
        given, applies to every answer."""
        return Session(super().session(context, output_schema=output_schema))


class Session:
    """Follow-up questions over one context (see `RLM.session`). Questions of one session
    run one at a time."""

    def __init__(self, native):
        self._native = native

    def ask(self, query):
        """Answers `query` in the session and returns a `Result` (blocks as
        `RLM.completion` does; Ctrl-C cancels the question, the variables set so far are
        kept)."""
        return self._native.ask(query)

    async def aask(self, query):
        """`ask` as a coroutine of the running event loop."""
        return await self._native.aask(query)

    @property
    def variables(self):
        """The names of the variables the REPL holds after the last question."""
        return self._native.variables

    @property
    def history(self):
        """The questions so far and their answers: a list of `(query, answer)`."""
        return self._native.history

    def __repr__(self):
        return f"Session(questions={len(self.history)}, variables={self.variables!r})"


async def abatch_completion(prompts, model, **kwargs):
    """`await abatch_completion(prompts, model, ...)`: `batch_completion` as a coroutine of
    the running event loop; cancelling the awaiting task cancels the batch."""
    return await _rlm_rs.abatch_completion(prompts, model, **kwargs)


RLM.__module__ = "rlm_rs"
Session.__module__ = "rlm_rs"
