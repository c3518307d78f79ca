"""tools=: Python functions (sync and async) the REPL calls with JSON-like values."""

import asyncio

import rlm_rs

CALLS = []


def lookup(query):
    """The population of a city: lookup({"city": NAME})."""
    CALLS.append(query)
    return {"city": query["city"], "population": 2102650}


def boom(value):
    raise ValueError(f"cannot handle {value!r}")


async def slow_double(n):
    await asyncio.sleep(0.01)
    return n * 2


def test_tools_are_called_and_an_exception_is_an_error_string(base_url):
    rlm = rlm_rs.RLM(
        "root-tools",
        base_url=base_url,
        tools={"lookup": lookup, "boom": boom, "slow_double": slow_double},
    )
    result = rlm.completion("ctx", "How many people live in Paris?")
    assert CALLS == [{"city": "Paris"}]
    population, error, doubled = result.answer.split("|")
    assert population == "2102650"
    assert error.startswith("Error: ") and "ValueError: cannot handle 'x'" in error
    assert doubled == "42"
    assert result.tool_calls == 3
    assert result.stopped == "final"


def test_tools_are_traced(base_url, tmp_path):
    trace = tmp_path / "run.jsonl"
    rlm = rlm_rs.RLM(
        "root-tools",
        base_url=base_url,
        trace=trace,
        tools={"lookup": lookup, "boom": boom, "slow_double": slow_double},
    )
    rlm.completion("ctx", "q")
    text = trace.read_text()
    assert text.count('"event":"tool_call"') == 3, text
    assert "cannot handle" in text


def test_bad_tools_are_refused():
    import pytest

    with pytest.raises(TypeError):
        rlm_rs.RLM("m", base_url="http://127.0.0.1:9/v1", tools={"f": 3})
    rlm = rlm_rs.RLM("m", base_url="http://127.0.0.1:9/v1", tools={"llm_query": lookup})
    with pytest.raises(rlm_rs.UsageError, match="REPL's own"):
        rlm.completion("c", "q")
