"""Type stubs of rlm_rs (the native module rlm_rs._rlm_rs)."""

import os
from typing import (
    Any,
    Awaitable,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Type,
    Union,
)

__version__: str

JSON = Union[None, bool, int, float, str, List["JSON"], Dict[str, "JSON"]]
Context = Union[str, List[str], Dict[str, Any], List[Any], "os.PathLike[str]"]
Message = Dict[str, str]
Backend = Callable[[List[Message], str], Union[str, Awaitable[str]]]
Tool = Callable[..., Any]
# A JSON Schema dict, or a Pydantic model class (then `Result.parsed` is an instance).
OutputSchema = Union[Dict[str, Any], Type[Any]]
# A JOBS.jsonl line as a dict: "id" and "query" (str), and optionally "context" (JSON-like),
# "context_path" (str or PathLike), "expected", "output_schema" (a JSON Schema dict),
# "model", "sub_model".
Job = Dict[str, Any]

class RlmError(Exception):
    """Base class of rlm_rs's errors (an internal error, a bug, is an RlmError itself)."""

class UsageError(RlmError):
    """Settings that cannot work (`rlm --json` kind `usage`)."""

class InputError(RlmError):
    """The context or a settings file cannot be read (`rlm --json` kind `input`)."""

class ServerError(RlmError):
    """The model server (or a Python backend) failed (`rlm --json` kind `server`)."""

class AuthError(RlmError):
    """Credentials refused, quota exhausted, or no API key (`rlm --json` kind `auth`)."""

class BudgetError(RlmError):
    """max_time ran out and the run's code did not stop in time (`rlm --json` kind `budget`)."""

class Result:
    """The outcome of a run."""

    answer: str
    parsed: Any
    stopped: str
    iterations: int
    elapsed_ms: int
    sub_calls: int
    failed_sub_calls: int
    cancelled_sub_calls: int
    refused_sub_calls: int
    tool_calls: int
    child_runs: int
    max_depth_reached: int
    warnings: List[str]
    # `RLM.batch` only: the job's id; why the job has no result ("" answer, stopped
    # "error") and its kind ("usage", "input", "server", "auth", "budget", "internal");
    # whether the answer equals the job's `expected`. None otherwise.
    id: Optional[str]
    error: Optional[str]
    error_kind: Optional[str]
    correct: Optional[bool]
    @property
    def usage(self) -> Dict[str, Dict[str, int]]: ...
    @property
    def cost_usd(self) -> Dict[str, Any]: ...
    def to_dict(self) -> Dict[str, Any]: ...

class RLM:
    """A Recursive Language Model; see help(rlm_rs.RLM)."""

    def __init__(
        self,
        model: str,
        sub_model: Optional[str] = None,
        *,
        base_url: Optional[str] = None,
        api_key: Optional[str] = None,
        tools: Optional[Mapping[str, Tool]] = None,
        backend: Optional[Backend] = None,
        child_model: Optional[str] = None,
        api_key_env: Optional[str] = None,
        timeout: Optional[float] = None,
        sub_timeout: Optional[float] = None,
        max_retries: Optional[int] = None,
        rpm: Optional[int] = None,
        tpm: Optional[int] = None,
        sub_rpm: Optional[int] = None,
        sub_tpm: Optional[int] = None,
        max_iterations: Optional[int] = None,
        max_concurrent: Optional[int] = None,
        max_sub_calls: Optional[int] = None,
        max_total_tokens: Optional[int] = None,
        max_depth: Optional[int] = None,
        child_max_iterations: Optional[int] = None,
        sub_max_prompt_tokens: Optional[int] = None,
        max_time: Optional[float] = None,
        max_cost: Optional[float] = None,
        prices: Optional[Union[str, "os.PathLike[str]"]] = None,
        max_memory: Optional[int] = None,
        block_timeout: Optional[float] = None,
        max_string_bytes: Optional[int] = None,
        max_context_bytes: Optional[int] = None,
        no_cache: Optional[bool] = None,
        cache_dir: Optional[Union[str, "os.PathLike[str]"]] = None,
        cache_max_bytes: Optional[int] = None,
        cache_ttl: Optional[float] = None,
        redis: Optional[str] = None,
        redis_prefix: Optional[str] = None,
        system_prompt: Optional[str] = None,
        trace: Optional[Union[str, "os.PathLike[str]"]] = None,
    ) -> None: ...
    @property
    def model(self) -> str: ...
    @property
    def sub_model(self) -> str: ...
    def completion(
        self, context: Context, query: str, *, output_schema: Optional[OutputSchema] = None
    ) -> Result: ...
    async def acompletion(
        self, context: Context, query: str, *, output_schema: Optional[OutputSchema] = None
    ) -> Result: ...
    def batch(self, jobs: Sequence[Job], *, max_runs: int = 8) -> List[Result]:
        """One Result per job, in order, `max_runs` at once, on this RLM's stack, key,
        backend and tools. A failed job's Result has `error` and `error_kind` (`stopped` is
        "error", `answer` ""); the others are kept. A bad job dict raises UsageError naming
        its index before anything runs. Batch Results do not count tool_calls, child_runs,
        cancelled_sub_calls, refused_sub_calls, max_depth_reached (0)."""
    async def abatch(self, jobs: Sequence[Job], *, max_runs: int = 8) -> List[Result]: ...
    def session(
        self, context: Context, *, output_schema: Optional[OutputSchema] = None
    ) -> "Session": ...

class Session:
    """Follow-up questions over one context (see RLM.session)."""

    def ask(self, query: str) -> Result: ...
    async def aask(self, query: str) -> Result: ...
    @property
    def variables(self) -> List[str]: ...
    @property
    def history(self) -> List[Tuple[str, str]]: ...

def batch_completion(
    prompts: Sequence[str],
    model: str,
    *,
    max_concurrent: int = 10,
    base_url: Optional[str] = None,
    api_key: Optional[str] = None,
    backend: Optional[Backend] = None,
    **limits: Any,
) -> List[str]: ...
async def abatch_completion(
    prompts: Sequence[str],
    model: str,
    *,
    max_concurrent: int = 10,
    base_url: Optional[str] = None,
    api_key: Optional[str] = None,
    backend: Optional[Backend] = None,
    **limits: Any,
) -> List[str]: ...
