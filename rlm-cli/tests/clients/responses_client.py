"""The official `openai` package against `rlm serve`'s Responses API.

argv: the server's base URL (http://HOST:PORT/v1). Three questions in one session with
previous_response_id (the second and third read the variable the first set), the third one
streamed with the package's stream helper; the raw event sequence of a streamed request;
GET and DELETE; a continued older response refused; a session evicted by --max-sessions 2
is 404 session_not_found. Prints one JSON line of what it saw.
"""

import json
import sys

import openai
from openai import OpenAI

EXPECTED = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def main() -> None:
    client = OpenAI(base_url=sys.argv[1], api_key="unused", max_retries=0)
    first = client.responses.create(
        model="rlm",
        input=[
            {"role": "user", "content": "alpha beta gamma"},
            {"role": "user", "content": "count words"},
        ],
    )
    assert first.status == "completed", first
    assert first.output_text == "count=3", first
    second = client.responses.create(
        model="rlm", input="second word", previous_response_id=first.id
    )
    assert second.output_text == "second=beta", second
    assert second.previous_response_id == first.id

    # Third question, streamed through the package's helper.
    seen = []
    with client.responses.stream(
        model="rlm", input="last word", previous_response_id=second.id
    ) as stream:
        for event in stream:
            seen.append(event.type)
        third = stream.get_final_response()
    assert third.output_text == "last=gamma", third
    order = [t for i, t in enumerate(seen) if i == 0 or seen[i - 1] != t]
    assert order == EXPECTED, seen

    # GET gives the stored response; an older response of the session cannot be continued.
    got = client.responses.retrieve(third.id)
    assert got.output_text == "last=gamma" and got.id == third.id
    try:
        client.responses.create(model="rlm", input="second word", previous_response_id=first.id)
        raise SystemExit("continuing an older response was accepted")
    except openai.APIStatusError as error:
        assert error.status_code == 409, error

    # DELETE ends the session (it was its latest response).
    client.responses.delete(third.id)
    for gone in (third.id, first.id):
        try:
            client.responses.retrieve(gone)
            raise SystemExit(f"{gone} still there after delete")
        except openai.NotFoundError as error:
            assert error.code == "session_not_found", error.body

    # Raw streamed events: numbered from 0, in order.
    raw = client.responses.create(
        model="rlm",
        input=[
            {"role": "user", "content": "alpha beta gamma"},
            {"role": "user", "content": "count words"},
        ],
        stream=True,
    )
    events = list(raw)
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(events))), numbers
    types = [e.type for e in events]
    assert [t for i, t in enumerate(types) if i == 0 or types[i - 1] != t] == EXPECTED, types
    streamed_id = events[-1].response.id

    # --max-sessions 2: a third new session evicts the least recently used one.
    sessions = [
        client.responses.create(
            model="rlm",
            input=[
                {"role": "user", "content": "alpha beta gamma"},
                {"role": "user", "content": "count words"},
            ],
        )
        for _ in range(2)
    ]
    try:
        client.responses.create(
            model="rlm", input="second word", previous_response_id=streamed_id
        )
        raise SystemExit("an evicted session was continued")
    except openai.NotFoundError as error:
        assert error.code == "session_not_found", error.body
    latest = client.responses.create(
        model="rlm", input="second word", previous_response_id=sessions[-1].id
    )
    assert latest.output_text == "second=beta", latest

    # Refused parameters name themselves.
    try:
        client.responses.create(model="rlm", input="count words", temperature=0.2)
        raise SystemExit("temperature was silently accepted")
    except openai.BadRequestError as error:
        assert error.code == "unsupported_parameter" and "temperature" in str(error), error

    print(json.dumps({"ok": True, "stream_events": seen}))


if __name__ == "__main__":
    main()
