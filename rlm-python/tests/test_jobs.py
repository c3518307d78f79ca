"""RLM.batch / RLM.abatch: JOBS.jsonl-style dicts on the RLM's own stack, results in order,
a failing job kept as a Result with `error`, bad job dicts refused before anything runs."""

import asyncio
import json

import pytest

import rlm_rs


def jobs(n):
    return [{"id": f"j{i}", "query": "What is it?", "context": f"job {i}"} for i in range(n)]


def test_fifty_jobs_in_order_with_one_failing(base_url, tmp_path):
    rlm = rlm_rs.RLM("root-echo", "upper-sub", base_url=base_url, max_iterations=3)
    batch = jobs(50)
    # A context that cannot be read fails its job, not the batch.
    batch[17] = {"id": "j17", "query": "q", "context_path": tmp_path / "missing.txt"}
    results = rlm.batch(batch, max_runs=4)
    assert len(results) == 50
    for i, result in enumerate(results):
        assert isinstance(result, rlm_rs.Result)
        assert result.id == f"j{i}"
        if i == 17:
            assert result.answer == ""
            assert result.stopped == "error"
            assert result.error_kind == "input"
            assert "missing.txt" in result.error
            assert result.to_dict()["error"] == result.error
            assert "error=" in repr(result)
        else:
            assert result.error is None and result.error_kind is None, (i, result.error)
            assert result.answer == f"ECHO: JOB {i}", (i, result.answer)
            assert result.stopped == "final"
            assert result.sub_calls == 1
            assert result.usage["upper-sub"]["calls"] == 1


def test_expected_output_schema_and_model_per_job(base_url):
    rlm = rlm_rs.RLM("root-echo", "upper-sub", base_url=base_url, max_iterations=3)
    results = rlm.batch(
        [
            {"id": "a", "query": "q", "context": "x", "expected": "ECHO: X"},
            {"id": "b", "query": "q", "context": "y", "expected": "something else"},
            {
                "id": "c",
                "query": "q",
                "model": "root-typed",
                "output_schema": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "born": {"type": "integer"}},
                    "required": ["name", "born"],
                },
            },
        ]
    )
    assert [r.correct for r in results] == [True, False, None]
    assert results[2].parsed == {"name": "Ada", "born": 1815}
    assert json.loads(results[2].answer) == {"name": "Ada", "born": 1815}
    assert "root-typed" in results[2].usage


def test_abatch_inside_a_running_event_loop(base_url):
    rlm = rlm_rs.RLM("root-echo", "upper-sub", base_url=base_url, max_iterations=3)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.get_running_loop().create_task(ticker())
        results = await rlm.abatch(jobs(10), max_runs=3)
        task.cancel()
        return results, ticks

    results, ticks = asyncio.run(main())
    assert [r.answer for r in results] == [f"ECHO: JOB {i}" for i in range(10)]
    # The loop went on while the jobs ran.
    assert ticks > 0


def test_the_rlms_backend_holds_and_a_failing_model_is_one_result():
    def backend(messages, model):
        if model == "unknown":
            raise RuntimeError("the model 'unknown' does not exist")
        if model == "root":
            return "```repl\nFINAL(llm_query(context));\n```"
        return f"{model}:{messages[-1]['content']}"

    rlm = rlm_rs.RLM("root", "sub", backend=backend, max_retries=0)
    batch = jobs(5)
    batch[2]["model"] = "unknown"
    results = rlm.batch(batch, max_runs=2)
    assert [r.answer for r in results] == ["sub:job 0", "sub:job 1", "", "sub:job 3", "sub:job 4"]
    assert results[2].error_kind == "server"
    assert "does not exist" in results[2].error
    assert results[2].stopped == "error"


def test_bad_jobs_are_refused_before_anything_runs():
    calls = []

    def backend(messages, model):
        calls.append(model)
        return "FINAL(x)"

    rlm = rlm_rs.RLM("root", backend=backend)
    with pytest.raises(rlm_rs.UsageError, match="job 1"):
        rlm.batch([{"id": "a", "query": "q"}, {"id": "b"}])
    with pytest.raises(rlm_rs.UsageError, match="job 2: a job must be a dict"):
        rlm.batch([{"id": "a", "query": "q"}, {"id": "b", "query": "q"}, "query"])
    with pytest.raises(rlm_rs.UsageError, match="list of dicts"):
        rlm.batch({"id": "a", "query": "q"})
    with pytest.raises(rlm_rs.UsageError, match="max_runs"):
        rlm.batch([{"id": "a", "query": "q"}], max_runs=0)
    assert calls == []
    assert rlm.batch([]) == []


def test_the_rlms_tools_hold_in_batch_jobs(base_url):
    def lookup(query):
        return {"city": query["city"], "population": 2102650}

    def boom(value):
        raise ValueError(f"cannot handle {value!r}")

    def slow_double(n):
        return n * 2

    rlm = rlm_rs.RLM(
        "root-tools",
        base_url=base_url,
        tools={"lookup": lookup, "boom": boom, "slow_double": slow_double},
    )
    results = rlm.batch([{"id": f"t{i}", "query": "q"} for i in range(3)], max_runs=2)
    for result in results:
        assert result.error is None, result.error
        population, error, doubled = result.answer.split("|")
        assert (population, doubled) == ("2102650", "42")
        assert "ValueError: cannot handle 'x'" in error
