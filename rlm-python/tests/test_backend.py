"""backend=: a Python callable (sync or async) answers instead of an HTTP server."""

import asyncio
import json

import pytest

import rlm_rs

ROOT = "```repl\nlet answers = llm_batch([\"a\", \"b\", \"c\"]);\nFINAL(answers);\n```"


def sync_backend(messages, model):
    assert all(set(m) == {"role", "content"} for m in messages)
    if model == "root":
        return ROOT
    return f"{model}:{messages[-1]['content']}"


async def async_backend(messages, model):
    await asyncio.sleep(0.001)
    return sync_backend(messages, model)


@pytest.mark.parametrize("backend", [sync_backend, async_backend])
def test_a_python_backend_answers_root_and_sub_calls(backend):
    rlm = rlm_rs.RLM("root", "sub", backend=backend)
    result = rlm.completion("ctx", "q")
    assert json.loads(result.answer) == ["sub:a", "sub:b", "sub:c"]
    assert result.sub_calls == 3
    assert result.usage["sub"]["calls"] == 3


def test_a_backend_that_raises_fails_the_run_or_the_item():
    def root_fails(messages, model):
        raise RuntimeError("model offline")

    with pytest.raises(rlm_rs.ServerError, match="model offline"):
        rlm_rs.RLM("root", backend=root_fails, max_retries=0).completion("c", "q")

    def sub_fails(messages, model):
        if model == "root":
            return ROOT
        if messages[-1]["content"] == "b":
            raise RuntimeError("no b")
        return "ok"

    result = rlm_rs.RLM("root", "sub", backend=sub_fails).completion("c", "q")
    assert result.failed_sub_calls == 1
    assert 'Error: the Python backend raised RuntimeError: no b' in result.answer


def test_batch_completion_with_a_backend():
    answers = rlm_rs.batch_completion(
        ["a", "b"], "m", backend=async_backend, max_concurrent=2
    )
    assert answers == ["m:a", "m:b"]
