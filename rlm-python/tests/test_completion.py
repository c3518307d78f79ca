"""RLM(...).completion against the mock with a scripted root model."""

import pathlib
import threading

import pytest

import rlm_rs


def test_completion_returns_the_answer_and_figures(base_url):
    rlm = rlm_rs.RLM("root-echo", "upper-sub", base_url=base_url, max_iterations=3)
    result = rlm.completion("the context", "What is it?")
    assert isinstance(result, rlm_rs.Result)
    assert result.answer == "ECHO: THE CONTEXT"
    assert result.stopped == "final"
    assert result.iterations == 1
    assert result.sub_calls == 1
    assert result.failed_sub_calls == 0
    assert result.tool_calls == 0
    assert result.parsed is None
    assert set(result.usage) == {"root-echo", "upper-sub"}
    assert result.usage["upper-sub"]["calls"] == 1
    assert result.cost_usd["unpriced"] == ["root-echo", "upper-sub"]
    d = result.to_dict()
    for key in ("answer", "parsed", "stopped", "iterations", "usage", "cost_usd",
                "warnings", "sub_calls", "failed_sub_calls", "elapsed_ms"):
        assert key in d, key
    assert d["answer"] == result.answer
    assert "ECHO" in repr(result)


def test_context_kinds_reach_the_repl(base_url, tmp_path):
    rlm = rlm_rs.RLM("root-echo", "upper-sub", base_url=base_url)
    # A list of documents, a dict, and a directory given as a Path (one document per file).
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.txt").write_text("beta")
    for context, seen in [
        (["first doc", "second doc"], "SECOND DOC"),
        ({"k": [1, 2]}, "K"),
        (tmp_path, "ALPHA"),
        (pathlib.Path(tmp_path / "a.txt"), "ECHO: ALPHA"),
    ]:
        answer = rlm.completion(context, "q").answer
        assert seen.upper() in answer, (context, answer)


def test_bad_input_raises_the_kind_of_error(base_url, tmp_path):
    with pytest.raises(TypeError, match="max_iteration"):
        rlm_rs.RLM("root-echo", base_url=base_url, max_iteration=3)
    with pytest.raises(rlm_rs.UsageError, match="max_concurrent"):
        rlm_rs.RLM("root-echo", base_url=base_url, max_concurrent=0)
    with pytest.raises(rlm_rs.UsageError):
        rlm_rs.RLM("  ", base_url=base_url)
    rlm = rlm_rs.RLM("root-echo", base_url=base_url, max_context_bytes=10)
    with pytest.raises(rlm_rs.InputError, match="max-context-bytes"):
        big = tmp_path / "big.txt"
        big.write_text("x" * 100)
        rlm.completion(big, "q")
    with pytest.raises(rlm_rs.InputError):
        rlm.completion(tmp_path / "missing.txt", "q")
    with pytest.raises(rlm_rs.UsageError, match="context must be"):
        rlm.completion({1, 2}, "q")
    # The server refuses the root model's request: a ServerError, an RlmError.
    failing = rlm_rs.RLM("root-script-exhausted", base_url=base_url, max_retries=0)
    with pytest.raises(rlm_rs.ServerError) as caught:
        failing.completion("c", "q")
    assert isinstance(caught.value, rlm_rs.RlmError)
    assert "sk-test-never-print-me" not in str(caught.value)
    # Nothing listening: a ServerError too.
    down = rlm_rs.RLM("m", base_url="http://127.0.0.1:9/v1", max_retries=0)
    with pytest.raises(rlm_rs.ServerError):
        down.completion("c", "q")


def test_runs_from_threads_share_one_rlm(base_url):
    rlm = rlm_rs.RLM("root-echo", "upper-sub", base_url=base_url)
    answers = {}

    def work(i):
        answers[i] = rlm.completion(f"context {i}", "q").answer

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == {i: f"ECHO: CONTEXT {i}" for i in range(6)}
