"""output_schema=: a JSON Schema dict or a Pydantic model class; result.parsed."""

import pydantic
import pytest

import rlm_rs


class Person(pydantic.BaseModel):
    name: str
    born: int


def test_a_pydantic_class_gives_an_instance(base_url):
    rlm = rlm_rs.RLM("root-typed", base_url=base_url)
    result = rlm.completion("ctx", "Who?", output_schema=Person)
    assert result.stopped == "final"
    assert isinstance(result.parsed, Person)
    assert result.parsed == Person(name="Ada", born=1815)
    assert result.to_dict()["parsed"] == {"name": "Ada", "born": 1815}


def test_a_schema_dict_gives_the_json_value(base_url):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "born": {"type": "integer"}},
        "required": ["name", "born"],
    }
    result = rlm_rs.RLM("root-typed", base_url=base_url).completion("c", "q", output_schema=schema)
    assert result.parsed == {"name": "Ada", "born": 1815}


def test_an_answer_that_never_fits_is_not_parsed(base_url):
    schema = {"type": "object", "required": ["missing"]}
    rlm = rlm_rs.RLM("root-typed", base_url=base_url, max_iterations=3)
    result = rlm.completion("c", "q", output_schema=schema)
    assert result.stopped != "final"
    assert result.parsed is None


def test_a_bad_schema_argument_is_refused(base_url):
    with pytest.raises(TypeError):
        rlm_rs.RLM("root-typed", base_url=base_url).completion("c", "q", output_schema=3)
