"""Connection checks: each provider lists the models through its real SDK over real HTTP, against a
fake server, and says in plain words whether the endpoint, the key and the model name are right."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from orchestrator.providers.anthropic import AnthropicProvider
from orchestrator.providers.base import ProviderError
from orchestrator.providers.demo import DemoProvider
from orchestrator.providers.gemini import GeminiProvider
from orchestrator.providers.openai_compat import OpenAIProvider
from tests.conftest import free_port
from tests.fakes.anthropic_fake import AnthropicFake
from tests.fakes.gemini_fake import GeminiFake
from tests.fakes.openai_fake import OpenAIFake

KEY = "sk-right-key-0123456789"

# name: (fake, provider class, a model the fake lists, the path its models list is served under)
PROVIDERS = {
    "openai": (OpenAIFake, OpenAIProvider, "gpt-4o-mini", "/v1"),
    "gemini": (GeminiFake, GeminiProvider, "gemini-2.5-flash", ""),
    "anthropic": (AnthropicFake, AnthropicProvider, "claude-haiku-4-5", ""),
}


@pytest.fixture(params=sorted(PROVIDERS))
def setup(request) -> Iterator[tuple[str, object, type, str]]:
    fake_class, provider_class, model, _ = PROVIDERS[request.param]
    with fake_class(expect_key=KEY) as fake:
        yield request.param, fake, provider_class, model
    assert fake.errors == []


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


def provider_for(provider_class: type, base_url: str, api_key: str):
    return provider_class(base_url=base_url, api_key=api_key)


async def test_a_good_key_and_a_listed_model_are_confirmed(setup):
    _, fake, provider_class, model = setup
    message = await provider_for(provider_class, fake.base_url, KEY).check(model)
    assert message.startswith("Connected to ") and message.endswith(f"; {model} is available.")
    assert any(request.method == "GET" and request.path.endswith("/models") for request in fake.requests)


async def test_a_model_the_endpoint_does_not_list_is_pointed_out(setup):
    _, fake, provider_class, _ = setup
    message = await provider_for(provider_class, fake.base_url, KEY).check("no-such-model")
    assert "but no-such-model is not among the 2 models it lists: check the model name." in message


async def test_a_bad_key_is_reported_as_rejected(setup):
    _, fake, provider_class, model = setup
    with pytest.raises(ProviderError) as caught:
        await provider_for(provider_class, fake.base_url, "sk-wrong-key-9876543210").check(model)
    assert caught.value.message.startswith("the API key was rejected")
    assert not caught.value.retryable


@pytest.mark.parametrize("name", sorted(PROVIDERS))
async def test_an_unreachable_endpoint_says_it_could_not_connect(name):
    _, provider_class, model, prefix = PROVIDERS[name]
    base_url = f"http://127.0.0.1:{free_port()}{prefix}"
    with pytest.raises(ProviderError) as caught:
        await provider_for(provider_class, base_url, KEY).check(model)
    message = caught.value.message
    assert message == f"could not connect to the model at {base_url}" or message.startswith(
        "the connection to Gemini failed (ConnectError")


@pytest.mark.parametrize("name", sorted(PROVIDERS))
async def test_an_endpoint_that_never_answers_times_out(name, silent_port):
    _, provider_class, model, prefix = PROVIDERS[name]
    base_url = f"http://127.0.0.1:{silent_port}{prefix}"
    with pytest.raises(ProviderError) as caught:
        await provider_for(provider_class, base_url, KEY).check(model, timeout=0.5)
    assert caught.value.message in (f"the model at {base_url} did not answer in time", "Gemini did not answer in time")


async def test_an_openai_base_url_without_a_model_list_is_questioned():
    with OpenAIFake(expect_key=KEY) as fake:
        base_url = fake.base_url.removesuffix("/v1") + "/api"
        with pytest.raises(ProviderError) as caught:
            await OpenAIProvider(base_url=base_url, api_key=KEY).check("gpt-4o-mini")
    assert caught.value.message.startswith(f"{base_url} has no model list (404): is the base URL right?")


async def test_an_openai_compatible_endpoint_without_keys_needs_none():
    with OpenAIFake() as fake:
        message = await OpenAIProvider(base_url=fake.base_url, api_key="").check("gpt-4o")
        assert message == f"Connected to {fake.base_url}; gpt-4o is available."


@pytest.mark.parametrize("provider_class,variable", [(GeminiProvider, "GEMINI_API_KEY"),
                                                     (AnthropicProvider, "ANTHROPIC_API_KEY")])
async def test_a_missing_key_is_named_before_any_call(provider_class, variable):
    with pytest.raises(ProviderError, match=f"no API key for .*: set {variable}"):
        await provider_class(base_url=f"http://127.0.0.1:{free_port()}", api_key="").check("any")


async def test_gemini_model_names_may_carry_their_models_prefix():
    with GeminiFake(expect_key=KEY) as fake:
        message = await GeminiProvider(base_url=fake.base_url, api_key=KEY).check("models/gemini-2.5-flash")
    assert message.endswith("; gemini-2.5-flash is available.")


async def test_the_demo_model_needs_no_connection():
    assert "nothing to connect to" in await DemoProvider().check("anything")
