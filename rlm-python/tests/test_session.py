"""RLM.session(context).ask(query): a follow-up question uses a variable of the first."""

import asyncio

import rlm_rs


def test_a_follow_up_uses_a_variable_from_the_first_question(base_url):
    rlm = rlm_rs.RLM("root-session", "upper-sub", base_url=base_url)
    session = rlm.session("the context")
    first = session.ask("Q-ONE: how much?")
    assert first.answer == "42"
    assert "total" in session.variables
    second = session.ask("Q-TWO: and twice that?")
    assert second.answer == "84", second.to_dict()
    assert [q for q, _ in session.history] == ["Q-ONE: how much?", "Q-TWO: and twice that?"]
    # A fresh completion has no such variable: the follow-up fails there.
    lone = rlm_rs.RLM("root-session", base_url=base_url, max_iterations=2).completion(
        "the context", "Q-TWO: and twice that?"
    )
    assert lone.answer != "84"


def test_aask_in_a_running_loop(base_url):
    rlm = rlm_rs.RLM("root-session", "upper-sub", base_url=base_url)

    async def main():
        session = rlm.session("ctx")
        first = await session.aask("Q-ONE")
        second = await session.aask("Q-TWO")
        return first.answer, second.answer

    assert asyncio.run(main()) == ("42", "84")
