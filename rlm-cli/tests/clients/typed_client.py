"""Typed answers through `rlm serve`, with the `openai` package's `parse` and LangChain's
`with_structured_output`.

Usage: typed_client.py BASE_URL SERVER_KEY
The mock root model answers by the query's first word: "good" gives a conforming city at once,
"fix" first a wrong shape (refused by rlm) and then the right one, "never" a wrong shape every
time. Exits non-zero (an AssertionError or an exception) on any mismatch.
"""

import sys

import openai
from openai import OpenAI
from pydantic import BaseModel

base_url, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base_url, api_key=key, max_retries=0)


class City(BaseModel):
    city: str
    population: int


def ask(query):
    return client.chat.completions.parse(
        model="rlm",
        messages=[
            {"role": "user", "content": "a document about cities"},
            {"role": "user", "content": query},
        ],
        response_format=City,
    )


# A conforming answer: the SDK parses it into the model.
reply = ask("good: which city is largest?")
parsed = reply.choices[0].message.parsed
assert isinstance(parsed, City), reply
assert parsed == City(city="Oslo", population=709000), parsed
assert reply.model_extra["rlm"]["stopped"] == "final", reply.model_extra
print("parse ok:", parsed)

# A wrong shape first: rlm refuses it, the root corrects it, the client never sees it.
reply = ask("fix: which city is largest?")
parsed = reply.choices[0].message.parsed
assert parsed == City(city="Bergen", population=291000), reply
assert reply.model_extra["rlm"]["iterations"] == 2, reply.model_extra
print("corrected ok:", parsed)

# Never conforming: 422 schema_not_met, which the SDK raises.
try:
    ask("never: which city is largest?")
    raise AssertionError("a non-conforming run must not be a 200")
except openai.UnprocessableEntityError as error:
    assert error.status_code == 422, error
    body = error.body if isinstance(error.body, dict) else {}
    body = body.get("error", body)
    assert body.get("code") == "schema_not_met", error.body
    assert body.get("type") == "invalid_output", error.body
    print("422 ok:", body.get("message"))

# LangChain: with_structured_output(method="json_schema") sends response_format json_schema
# and returns an instance. (No token counting: nothing downloads an encoding.)
from langchain_openai import ChatOpenAI  # noqa: E402

llm = ChatOpenAI(model="rlm", base_url=base_url, api_key=key, max_retries=0)
structured = llm.with_structured_output(City, method="json_schema")
city = structured.invoke("good: which city is largest?")
assert city == City(city="Oslo", population=709000), city
print("langchain ok:", city)
