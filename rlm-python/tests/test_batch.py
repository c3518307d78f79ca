"""batch_completion: ordered, bounded (the Rust side checks the peak at the server),
per-item errors, cached."""

import asyncio

import rlm_rs


def test_two_hundred_prompts_in_order_with_one_failure(base_url):
    prompts = [f"prompt {i}" for i in range(200)]
    answers = rlm_rs.batch_completion(
        prompts, "batch-sub", max_concurrent=8, base_url=base_url, max_retries=2
    )
    assert len(answers) == 200
    for i, answer in enumerate(answers):
        if i == 13:
            assert answer.startswith("Error: ") and "prompt 13 is refused" in answer
        else:
            assert answer == f"answer to prompt {i}", (i, answer)


def test_abatch_completion_and_bad_arguments(base_url):
    import pytest

    async def main():
        return await rlm_rs.abatch_completion(
            ["again 1", "again 2"], "batch-sub", base_url=base_url, max_concurrent=8, max_retries=2
        )

    assert asyncio.run(main()) == ["answer to again 1", "answer to again 2"]
    # The same settings share one client and its cache: asked again, nothing is sent (the
    # Rust side counts the requests at the server).
    again = rlm_rs.batch_completion(
        [f"prompt {i}" for i in range(10)], "batch-sub", max_concurrent=8,
        base_url=base_url, max_retries=2,
    )
    assert again[:3] == ["answer to prompt 0", "answer to prompt 1", "answer to prompt 2"]
    with pytest.raises(rlm_rs.UsageError, match="list of str"):
        rlm_rs.batch_completion("one prompt", "m", base_url=base_url)
    with pytest.raises(rlm_rs.UsageError, match="max_concurrent"):
        rlm_rs.batch_completion(["a"], "m", base_url=base_url, max_concurrent=0)
    assert rlm_rs.batch_completion([], "m", base_url=base_url) == []
