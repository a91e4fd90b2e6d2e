"""FakeNebulaServer's models: the reference table, models= and default_models=, context lengths."""

from __future__ import annotations

import re

import aiohttp
import pytest

from nebula_async import ContextLengthExceededError, InvalidRequestError, ModelNotFoundError
from nebula_async.testing import FakeModel, FakeNebulaServer
from tests.testing._support import (
    EXAMPLE_MODELS,
    FAKE_KEY,
    FIVE_WORDS,
    REFERENCE_MODELS,
    body,
    both,
    finish_reasons,
    post,
    sdk,
    send,
)

# --- the model table ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [*REFERENCE_MODELS, *EXAMPLE_MODELS])
async def test_the_reference_models_are_served(
    http: aiohttp.ClientSession, fake: FakeNebulaServer, model: str
) -> None:
    """Each model of the API reference, of its table or of its examples ("gpt-4"), answers by default."""
    assert sorted(fake.models) == sorted([*REFERENCE_MODELS, *EXAMPLE_MODELS])
    assert (await send(http, fake, body(model=model))).success()["text"] == "Hello, World!"


async def test_unknown_model_is_a_404_model_not_found(
    http: aiohttp.ClientSession, fake: FakeNebulaServer
) -> None:
    """An unknown model is a 404 model_not_found with details naming it; the SDK raises ModelNotFoundError."""
    answer = await send(http, fake, body(model="gpt-5"))
    assert answer.status == 404
    error = answer.error()
    assert error["code"] == "model_not_found"
    assert error["details"] == {"model": "Model 'gpt-5' not found"}
    async with sdk(fake) as client:
        with pytest.raises(ModelNotFoundError) as caught:
            await client.generate_text(model="gpt-5", prompt="hi")
    assert (caught.value.code, caught.value.status_code) == ("model_not_found", 404)
    assert caught.value.details == {"model": "Model 'gpt-5' not found"}
    assert caught.value.request_id == fake.requests[-1].request_id
    assert len(fake.requests) == 2  # not retried


async def test_models_argument_adds_to_the_reference_models(http: aiohttp.ClientSession) -> None:
    """models=["mistral-7b"] serves mistral-7b and keeps the reference's models."""
    async with FakeNebulaServer(models=["mistral-7b"]) as server:
        for model in ["mistral-7b", *REFERENCE_MODELS, *EXAMPLE_MODELS]:
            assert (await send(http, server, body(model=model))).status == 200
        assert (await send(http, server, body(model="gpt-5"))).status == 404


def test_models_as_a_mapping_raises_with_a_hint() -> None:
    """models={"tiny": 16} raises TypeError showing the FakeModel spelling."""
    # Regression: models={"tiny": 16} served "tiny" and silently dropped its context length.
    with pytest.raises(TypeError, match=re.escape("FakeModel('tiny', context_length=16)")):
        FakeNebulaServer(models={"tiny": 16})


def test_models_mixing_names_and_fake_models_work() -> None:
    """models=["gpt-4", FakeModel("tiny", context_length=16)] serves both, tiny with a 16-token context."""
    with FakeNebulaServer(
        api_keys=[FAKE_KEY], models=["gpt-4", FakeModel("tiny", context_length=16)]
    ).run_in_thread() as server:
        assert server.models["gpt-4"] == FakeModel("gpt-4")
        assert post(server.base_url, {"model": "gpt-4", "prompt": "Hi"})[0] == 200
        assert post(server.base_url, {"model": "tiny", "prompt": " word" * 16})[0] == 200
        status, _, answer = post(server.base_url, {"model": "tiny", "prompt": " word" * 17})
    assert (status, answer["error"]["code"]) == (400, "context_length_exceeded")


# --- context length -------------------------------------------------------------------------------


async def test_prompt_over_the_context_length_is_rejected(http: aiohttp.ClientSession) -> None:
    """A prompt over the model's context_length is a 400 context_length_exceeded; the SDK raises its class."""
    async with FakeNebulaServer(models=[FakeModel("tiny", context_length=5)]) as server:
        prompt = "one two three four five six"
        answer = await send(http, server, body(model="tiny", prompt=prompt))
        assert answer.status == 400
        error = answer.error()
        assert error["code"] == "context_length_exceeded"
        assert set(error["details"]) == {"prompt"}
        async with sdk(server) as client:
            with pytest.raises(ContextLengthExceededError) as caught:
                await client.generate_text(model="tiny", prompt=prompt)
        assert isinstance(caught.value, InvalidRequestError)
        assert (caught.value.code, caught.value.status_code) == ("context_length_exceeded", 400)
        assert len(server.requests) == 2  # not retried


async def test_prompt_exactly_at_the_context_length_is_accepted(http: aiohttp.ClientSession) -> None:
    """A prompt of exactly context_length tokens is answered, with no room left to generate."""
    async with FakeNebulaServer(models=[FakeModel("tiny", context_length=5)]) as server:
        data, events = await both(http, server, body(model="tiny", prompt="one two three four five"))
    assert data["usage"]["prompt_tokens"] == 5
    assert data["usage"]["completion_tokens"] == 0
    assert data["text"] == ""
    assert events == [{"text": "", "finish_reason": "length"}]


async def test_generation_is_cut_to_the_context_room(http: aiohttp.ClientSession) -> None:
    """Generation stops where prompt plus completion fill the context, with finish_reason "length"."""
    model = FakeModel("tiny", context_length=7)
    async with FakeNebulaServer(models=[model], replies={"one two three": FIVE_WORDS}) as server:
        data, events = await both(http, server, body(model="tiny", prompt="one two three", max_tokens=100))
    assert data["text"] == "one two three four"
    assert data["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert finish_reasons(events) == [None, None, None, "length"]
