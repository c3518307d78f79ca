"""Drives `rlm serve` with the official `openai` Python package.

Usage: openai_client.py BASE_URL SERVER_KEY
The server's mock model answers every query with "ECHO: " + the context upper-cased.
Exits non-zero (an AssertionError or an exception) on any mismatch.
"""

import asyncio
import sys

import openai
from openai import AsyncOpenAI, OpenAI

base_url, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url, api_key=key, max_retries=0)

# The model list.
ids = [m.id for m in client.models.list()]
assert ids == ["rlm"], ids

# A plain call: the context is the earlier message, the system message an instruction.
reply = client.chat.completions.create(
    model="rlm",
    messages=[
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "the sdk document"},
        {"role": "user", "content": "What does it say?"},
    ],
)
assert reply.choices[0].message.content == "ECHO: THE SDK DOCUMENT", reply
assert reply.choices[0].finish_reason == "stop", reply
assert reply.usage.total_tokens > 0, reply
rlm = reply.model_extra["rlm"]
assert rlm["stopped"] == "final" and rlm["iterations"] == 1, rlm
assert rlm["sub_calls"] == 1 and rlm["failed_sub_calls"] == 0, rlm
assert rlm["warnings"] == [], rlm
print("sync ok:", reply.choices[0].message.content, rlm)

# Streaming with usage: thinking first, then the answer, then usage.
stream = client.chat.completions.create(
    model="rlm",
    messages=[
        {"role": "user", "content": "streamed document"},
        {"role": "user", "content": "What does it say?"},
    ],
    stream=True,
    stream_options={"include_usage": True},
)
phases, reasoning, answer, usage = [], "", "", None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
        phases.append("usage")
        continue
    delta = chunk.choices[0].delta
    extra = delta.model_extra or {}
    thought = getattr(delta, "reasoning_content", None) or extra.get("reasoning_content")
    if thought:
        reasoning += thought
        phases.append("reasoning")
    elif delta.content:
        answer += delta.content
        phases.append("content")
    elif chunk.choices[0].finish_reason:
        phases.append("finish")
order = ["reasoning", "content", "finish", "usage"]
seen = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
assert seen == order, (seen, phases)
assert answer == "ECHO: STREAMED DOCUMENT", answer
assert "Turn 1" in reasoning and "llm_query" in reasoning, reasoning
assert usage.total_tokens > 0, usage
print("stream ok:", answer, f"({len(reasoning)} chars of reasoning)")

# Errors come back as the SDK's own exceptions.
try:
    OpenAI(base_url=base_url, api_key="wrong-key", max_retries=0).models.list()
    raise AssertionError("a wrong server key was accepted")
except openai.AuthenticationError as e:
    assert e.status_code == 401 and e.body["code"] == "invalid_api_key", e.body
try:
    client.chat.completions.create(model="rlm", messages=[{"role": "system", "content": "x"}])
    raise AssertionError("a request without a user message was accepted")
except openai.BadRequestError as e:
    assert e.status_code == 400 and e.body["code"] == "no_user_message", e.body
    assert "user message" in e.message, e.message
print("errors ok")


# Eight concurrent async calls, each with its own context.
async def concurrent():
    aclient = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0)

    async def ask(i):
        r = await aclient.chat.completions.create(
            model="rlm",
            messages=[
                {"role": "user", "content": f"async document {i}"},
                {"role": "user", "content": "What does it say?"},
            ],
        )
        return r.choices[0].message.content

    answers = await asyncio.gather(*(ask(i) for i in range(8)))
    assert answers == [f"ECHO: ASYNC DOCUMENT {i}" for i in range(8)], answers
    await aclient.close()


asyncio.run(concurrent())
print("async ok: 8 concurrent calls")

# Any model can be retrieved (any model name is accepted).
model = client.models.retrieve("gpt-4o")
assert model.id == "gpt-4o" and model.object == "model", model
print("models.retrieve ok:", model.id)

# Parameters rlm cannot honour are refused by name, before any run starts.
tool = {"type": "function", "function": {"name": "Answer", "parameters": {"type": "object"}}}
refused = {
    "tools": {"tools": [tool]},
    "tool_choice": {"tool_choice": "required"},
    "n": {"n": 2},
    "logprobs": {"logprobs": True},
    "top_logprobs": {"logprobs": False, "top_logprobs": 3},
    "logit_bias": {"logit_bias": {"1234": 5}},
    "functions": {"extra_body": {"functions": [{"name": "Answer", "parameters": {}}]}},
    "modalities": {"modalities": ["text", "audio"]},
}
for param, kwargs in refused.items():
    try:
        client.chat.completions.create(
            model="rlm", messages=[{"role": "user", "content": "q"}], **kwargs
        )
        raise AssertionError(f"{param} was accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400, (param, e)
        assert e.code == "unsupported_parameter" and e.param == param, (param, e.body)
        assert f"`{param}`" in e.message, (param, e.message)
print("refusals ok:", ", ".join(refused))

# Harmless parameters are accepted and named back; stop is honoured.
reply = client.chat.completions.create(
    model="rlm",
    messages=[
        {"role": "user", "content": "the tuned document"},
        {"role": "user", "content": "What does it say?"},
    ],
    temperature=0.3,
    seed=7,
    stop=["TUNED"],
)
assert reply.choices[0].message.content == "ECHO: THE ", reply
assert reply.model_extra["rlm"]["ignored_parameters"] == ["seed", "temperature"], reply
print("parameters ok")
