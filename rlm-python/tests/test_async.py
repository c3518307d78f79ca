"""acompletion inside a running event loop; completion inside one (as in Jupyter) with an
async tool does not deadlock."""

import asyncio

import rlm_rs


def test_acompletion_is_awaitable_and_the_loop_keeps_running(base_url):
    rlm = rlm_rs.RLM("root-late", "upper-sub", base_url=base_url)

    async def main():
        ticks = 0
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        results = await asyncio.gather(
            rlm.acompletion("c1", "q"), rlm.acompletion("c2", "q")
        )
        stop.set()
        await task
        return results, ticks

    results, ticks = asyncio.run(main())
    assert [r.answer for r in results] == ["late X", "late X"]
    # The loop ran its other task while the runs were awaited (the root replies take 300 ms).
    assert ticks > 1


def test_completion_inside_a_running_loop_with_an_async_tool(base_url):
    async def lookup(query):
        await asyncio.sleep(0)
        return {"population": 7}

    def boom(value):
        raise KeyError(value)

    async def slow_double(n):
        return n * 2

    rlm = rlm_rs.RLM(
        "root-tools",
        base_url=base_url,
        tools={"lookup": lookup, "boom": boom, "slow_double": slow_double},
    )

    async def notebook_cell():
        # A blocking call from a coroutine, as a notebook cell makes it.
        return rlm.completion("c", "q")

    result = asyncio.run(notebook_cell())
    assert result.answer.startswith("7|Error: ") and result.answer.endswith("|42")


def test_a_cancelled_task_cancels_the_run(base_url):
    rlm = rlm_rs.RLM("root-slow", "slow-sub", base_url=base_url)

    async def main():
        task = asyncio.create_task(rlm.acompletion("c", "q"))
        await asyncio.sleep(0.2)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        return "finished"

    assert asyncio.run(main()) == "cancelled"
