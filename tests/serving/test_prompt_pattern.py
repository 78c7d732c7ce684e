"""The published schema's prompt rule means what the server checks: for every character of the Basic
Multilingual Plane (where all whitespace is), a prompt of it alone is valid to JSON Schema validators
exactly when the server accepts it. jsonschema-rs reads patterns as ECMA-262 regexes (as JSON Schema
says), the jsonschema package as Python ones: both must agree with the server."""

from __future__ import annotations

import jsonschema
import jsonschema_rs
import pytest
from pydantic import ValidationError

from serving.app import ServerLimits, create_app
from serving.schemas import generate_request_model

SURROGATES = range(0xD800, 0xE000)  # Not characters: strict JSON refuses them before any schema.
# What a prompt is for the server and for a client validating against /openapi.json.
REQUEST_BODIES = ("GenerateRequest", "ImagesGenerationRequest")


@pytest.fixture(scope="module")
def published_prompt_schemas(served) -> dict[str, dict]:
    schema = create_app(lambda: None, served, ServerLimits(queue_size=0, request_timeout=1)).openapi()
    return {name: schema["components"]["schemas"][name]["properties"]["prompt"] for name in REQUEST_BODIES}


@pytest.fixture(scope="module")
def server_accepts(served):
    request_model = generate_request_model(served.model, served.family)

    def accepts(prompt: str) -> bool:
        try:
            request_model.model_validate({"prompt": prompt, "num_inference_steps": 1})
        except ValidationError:
            return False
        return True

    return accepts


def test_every_character_is_a_valid_prompt_to_the_schema_exactly_when_the_server_takes_it(published_prompt_schemas,
                                                                                         server_accepts):
    characters = [chr(code) for code in range(0x10000) if code not in SURROGATES]
    accepted = {character for character in characters if server_accepts(character)}
    assert {" ", "\t", "\x1c", "\x85", "\ufeff", "\u3000"}.isdisjoint(accepted)
    assert {"a", "\u180e", "\u200b"} <= accepted
    for name, prompt_schema in published_prompt_schemas.items():
        ecma = jsonschema_rs.validator_for(prompt_schema)
        disagreeing = [repr(character) for character in characters if ecma.is_valid(character) != (character in accepted)]
        assert not disagreeing, f"{name}: jsonschema-rs (ECMA-262) disagrees with the server on {disagreeing[:10]}"
        python = jsonschema.Draft202012Validator(prompt_schema)
        blank_or_not = [character for character in characters if not character.isalnum()]
        disagreeing = [repr(c) for c in blank_or_not if python.is_valid(c) != (c in accepted)]
        assert not disagreeing, f"{name}: jsonschema (Python re) disagrees with the server on {disagreeing[:10]}"


@pytest.mark.parametrize("prompt", ["  a fox  ", "\u3000fox", "fox\ufeff", "\x1c\x1d x"])
def test_a_prompt_with_text_among_whitespace_is_valid_everywhere(published_prompt_schemas, server_accepts, prompt):
    assert server_accepts(prompt)
    for prompt_schema in published_prompt_schemas.values():
        assert jsonschema_rs.validator_for(prompt_schema).is_valid(prompt)
        assert jsonschema.Draft202012Validator(prompt_schema).is_valid(prompt)
