"""No secret leaves the server: the environment's provider keys go only to the environment's own
endpoints, only staff set site-wide model settings, and a person's own endpoint is a server-side
request that may not reach the server's network. Every provider here is a fake on 127.0.0.1 reached
through the real SDK, which records the headers it was sent."""

from __future__ import annotations

import pytest
from asgiref.sync import async_to_sync
from django.urls import reverse

from orchestrator import netguard, roles, services
from orchestrator.models import ModelProfile, RoleAssignment
from tests.conftest import signed_in
from tests.fakes.anthropic_fake import AnthropicFake
from tests.fakes.gemini_fake import GeminiFake
from tests.fakes.openai_fake import OpenAIFake
from tests.pages import answered

pytestmark = pytest.mark.django_db(transaction=True)

HTMX = {"HX-Request": "true"}
SERVER_KEY = "sk-server-secret-4b1d9e77c0aa"


@pytest.fixture
def server_keys(settings):
    """The operator's keys, as the environment gives them to the server."""
    settings.OPENAI_API_KEY = SERVER_KEY
    settings.GEMINI_API_KEY = SERVER_KEY
    settings.ANTHROPIC_API_KEY = SERVER_KEY
    return settings


@pytest.fixture
def private_allowed(settings):
    """The fakes listen on 127.0.0.1: a site that lets people reach private addresses."""
    settings.CORTEX_HTTP_ALLOW_PRIVATE = True
    return settings


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("sam", password="sam-password-1", is_staff=True)


@pytest.fixture
def mallory_fake():
    """A server of a signed-in person's own, recording every request it gets."""
    with OpenAIFake() as fake:
        yield fake


def keys_received(fake) -> list[str]:
    headers = [request.headers for request in fake.requests]
    return [value for h in headers for name, value in h.items() if name in ("authorization", "x-api-key",
                                                                            "x-goog-api-key")]


def test_a_persons_endpoint_never_receives_the_server_key_on_the_connection_test(
        owner, alice, server_keys, private_allowed, mallory_fake):
    profile = services.profile_save(by=owner, owner=owner, name="mine", provider="openai", model="gpt-4o-mini",
                                    base_url=mallory_fake.base_url)
    response = alice.post(reverse("profile-check", args=[profile.pk]), headers=HTMX)
    assert response.status_code == 200 and "check-ok" in response.content.decode()
    assert mallory_fake.requests, "the connection test reached the person's server"
    assert all(SERVER_KEY not in value for value in keys_received(mallory_fake))
    assert keys_received(mallory_fake) == ["Bearer none"]


def test_a_persons_endpoint_never_receives_the_server_key_in_a_job(
        owner, server_keys, private_allowed, mallory_fake, engine, default_persona):
    profile = services.profile_save(by=owner, owner=owner, name="mine", provider="openai", model="gpt-4o-mini",
                                    base_url=mallory_fake.base_url)
    services.role_assign(by=owner, owner=owner, role="orchestrator", profile_id=profile.pk)
    services.role_assign(by=owner, owner=owner, role="chat", profile_id=profile.pk)
    mallory_fake.script_text("Loop answer.")
    mallory_fake.script_text("Final answer.")
    job = services.job_submit(user=owner, task="Hi")
    job = async_to_sync(engine.run_until)(job.pk, "complete")
    assert job.status == "complete" and mallory_fake.call_count == 2
    assert all(SERVER_KEY not in value for value in keys_received(mallory_fake))


def test_a_persons_own_key_goes_to_their_endpoint(owner, server_keys, private_allowed, mallory_fake, alice):
    profile = services.profile_save(by=owner, owner=owner, name="mine", provider="openai", model="gpt-4o-mini",
                                    base_url=mallory_fake.base_url, api_key="sk-alices-own")
    alice.post(reverse("profile-check", args=[profile.pk]), headers=HTMX)
    assert keys_received(mallory_fake) == ["Bearer sk-alices-own"]


@pytest.mark.parametrize("fake_class", [GeminiFake, AnthropicFake], ids=["gemini", "anthropic"])
def test_no_provider_lends_the_server_key_to_a_typed_endpoint(owner, alice, server_keys, private_allowed,
                                                              fake_class):
    provider = "gemini" if fake_class is GeminiFake else "anthropic"
    with fake_class() as fake:
        profile = services.profile_save(by=owner, owner=owner, name="mine", provider=provider, model="m",
                                        base_url=fake.base_url)
        response = alice.post(reverse("profile-check", args=[profile.pk]), headers=HTMX)
        assert "check-failed" in response.content.decode() and "no API key" in response.content.decode()
        assert all(SERVER_KEY not in value for value in keys_received(fake))


def test_a_site_wide_profile_without_a_base_url_uses_the_server_key_at_the_servers_endpoint(
        staff, outsider, bob, server_keys, engine, default_persona):
    with OpenAIFake(expect_key=SERVER_KEY) as operators_endpoint:
        server_keys.OPENAI_BASE_URL = operators_endpoint.base_url
        site = services.profile_save(by=staff, owner=None, name="team", provider="openai", model="gpt-4o-mini")
        services.role_assign(by=staff, owner=None, role="orchestrator", profile_id=site.pk)
        response = bob.post(reverse("profile-check", args=[site.pk]), headers=HTMX)
        assert "check-ok" in response.content.decode()
        operators_endpoint.script_text("Done.")
        job = services.job_submit(user=outsider, task="Hi", options=services.JobOptions(respond_with_final=False))
        job = async_to_sync(engine.run_until)(job.pk, "complete")
        assert job.response == "Done."
        assert set(keys_received(operators_endpoint)) == {f"Bearer {SERVER_KEY}"}
        assert operators_endpoint.errors == []


def test_the_environments_own_base_url_still_gets_the_environments_key(owner, alice, server_keys,
                                                                       private_allowed):
    with OpenAIFake(expect_key=SERVER_KEY) as operators_endpoint:
        server_keys.OPENAI_BASE_URL = operators_endpoint.base_url
        profile = services.profile_save(by=owner, owner=owner, name="mine", provider="openai", model="gpt-4o-mini",
                                        base_url=operators_endpoint.base_url + "/")
        response = alice.post(reverse("profile-check", args=[profile.pk]), headers=HTMX)
        assert "check-ok" in response.content.decode()


# --- Who may change site-wide model settings -------------------------------------------------------

def test_only_staff_create_change_and_delete_site_wide_profiles(owner, staff):
    with pytest.raises(services.Forbidden):
        services.profile_save(by=owner, owner=None, name="team", provider="demo", model="demo")
    site = services.profile_save(by=staff, owner=None, name="team", provider="demo", model="demo")
    with pytest.raises(services.Forbidden):
        services.profile_save(by=owner, owner=None, name="team", provider="openai", model="x", profile_id=site.pk)
    with pytest.raises(services.Forbidden):
        services.profile_delete(by=owner, owner=None, profile_id=site.pk)
    assert ModelProfile.objects.get(pk=site.pk).provider == "demo"
    services.profile_delete(by=staff, owner=None, profile_id=site.pk)
    assert not ModelProfile.objects.filter(pk=site.pk).exists()


def test_only_staff_assign_site_wide_roles(owner, staff):
    with pytest.raises(services.Forbidden):
        services.role_assign(by=owner, owner=None, role="orchestrator", profile_id=None, system_append="Obey me.")
    services.role_assign(by=staff, owner=None, role="orchestrator", profile_id=None, system_append="Site rules.")
    with pytest.raises(services.Forbidden):
        services.role_unassign(by=owner, owner=None, role="orchestrator")
    assert RoleAssignment.objects.get(owner=None, role="orchestrator").system_append == "Site rules."


def test_nobody_changes_another_persons_model_settings(owner, outsider):
    mine = services.profile_save(by=owner, owner=owner, name="mine", provider="demo", model="demo")
    with pytest.raises(services.Forbidden):
        services.profile_save(by=outsider, owner=owner, name="mine", provider="openai", model="x", profile_id=mine.pk)
    with pytest.raises(services.Forbidden):
        services.role_assign(by=outsider, owner=owner, role="chat", profile_id=None)


def test_the_page_offers_no_site_wide_profile_to_a_person(owner, alice):
    page = alice.get(reverse("settings-models")).content.decode()
    assert "site_wide" not in page and 'name="owner"' not in page
    # Whatever the form says, a person's new profile is their own.
    response = alice.post(reverse("profile-create"), {"name": "team", "provider": "demo", "model": "demo",
                                                      "owner": "", "site_wide": "on"})
    assert response.status_code == 302
    assert ModelProfile.objects.get(name="team").owner == owner


# --- A person's endpoint may not reach the server's network ---------------------------------------

@pytest.mark.parametrize("base_url", ["http://127.0.0.1:11434/v1", "http://10.0.0.7/v1", "http://[::1]:8000/v1",
                                      "http://169.254.169.254/latest", "http://localhost:9/v1"])
def test_a_person_cannot_save_a_private_endpoint(owner, alice, base_url):
    response = alice.post(reverse("profile-create"), {"name": "sneaky", "provider": "openai", "model": "m",
                                                      "base_url": base_url}, headers=HTMX)
    assert answered(response) == 400
    assert "the base URL cannot be used: refused to connect to" in response.content.decode()
    assert not ModelProfile.objects.filter(name="sneaky").exists()


def test_staff_may_point_a_site_wide_profile_at_localhost(staff):
    site = services.profile_save(by=staff, owner=None, name="ollama", provider="openai", model="llama3.1",
                                 base_url="http://127.0.0.1:11434/v1")
    assert not roles.credentials(site.pk).public_only


def test_the_connection_test_checks_the_endpoint_again(owner, alice, settings, mallory_fake):
    settings.CORTEX_HTTP_ALLOW_PRIVATE = True
    profile = services.profile_save(by=owner, owner=owner, name="mine", provider="openai", model="gpt-4o-mini",
                                    base_url=mallory_fake.base_url)
    settings.CORTEX_HTTP_ALLOW_PRIVATE = False  # or the name now resolves somewhere private
    html = alice.post(reverse("profile-check", args=[profile.pk]), headers=HTMX).content.decode()
    assert "check-failed" in html and "refused to connect to 127.0.0.1" in html
    assert mallory_fake.requests == []


def test_a_job_checks_the_endpoint_before_every_call(owner, settings, mallory_fake, engine, default_persona):
    settings.CORTEX_HTTP_ALLOW_PRIVATE = True
    profile = services.profile_save(by=owner, owner=owner, name="mine", provider="openai", model="gpt-4o-mini",
                                    base_url=mallory_fake.base_url)
    services.role_assign(by=owner, owner=owner, role="orchestrator", profile_id=profile.pk)
    settings.CORTEX_HTTP_ALLOW_PRIVATE = False
    job = services.job_submit(user=owner, task="Hi")
    job = async_to_sync(engine.run_until)(job.pk, "error")
    assert "is not allowed: refused to connect to 127.0.0.1" in job.error
    assert mallory_fake.requests == []


@pytest.fixture
def rebinding(monkeypatch):
    """The endpoint's name passes the check before a call, then resolves to a private address when
    the SDK connects: the check that runs ahead of the call is made to see a public address."""
    async def passes(url: str) -> None:
        return None

    monkeypatch.setattr(netguard, "check_endpoint", passes)


FAKES = {"openai": OpenAIFake, "gemini": GeminiFake, "anthropic": AnthropicFake}


@pytest.mark.parametrize("provider", FAKES)
def test_the_connection_test_refuses_a_private_address_met_only_when_connecting(owner, alice, settings,
                                                                                rebinding, provider):
    with FAKES[provider]() as fake:
        settings.CORTEX_HTTP_ALLOW_PRIVATE = True
        profile = services.profile_save(by=owner, owner=owner, name="mine", provider=provider,
                                        model=fake.default_model, base_url=fake.base_url, api_key="my-own-key-1234")
        settings.CORTEX_HTTP_ALLOW_PRIVATE = False
        html = alice.post(reverse("profile-check", args=[profile.pk]), headers=HTMX).content.decode()
        assert "check-failed" in html
        assert fake.requests == []


def test_a_job_refuses_a_private_address_met_only_when_connecting(owner, settings, mallory_fake, engine,
                                                                  default_persona, rebinding):
    settings.CORTEX_HTTP_ALLOW_PRIVATE = True
    profile = services.profile_save(by=owner, owner=owner, name="mine", provider="openai", model="gpt-4o-mini",
                                    base_url=mallory_fake.base_url)
    services.role_assign(by=owner, owner=owner, role="orchestrator", profile_id=profile.pk)
    settings.CORTEX_HTTP_ALLOW_PRIVATE = False
    settings.CORTEX_MODEL_ATTEMPTS = 1
    job = services.job_submit(user=owner, task="Hi")
    job = async_to_sync(engine.run_until)(job.pk, "error")
    assert job.error.startswith("model call failed")
    assert mallory_fake.requests == []


def test_staff_site_wide_endpoints_connect_without_the_check(staff, alice, settings, mallory_fake, rebinding):
    settings.CORTEX_HTTP_ALLOW_PRIVATE = False
    profile = services.profile_save(by=staff, owner=None, name="ollama", provider="openai", model="gpt-4o-mini",
                                    base_url=mallory_fake.base_url)
    html = alice.post(reverse("profile-check", args=[profile.pk]), headers=HTMX).content.decode()
    assert "check-ok" in html and mallory_fake.requests


def test_the_admin_applies_the_same_rules(staff, owner):
    staff.is_superuser = True
    staff.save()
    admin = signed_in(staff)
    add = reverse("admin:orchestrator_modelprofile_add")
    response = admin.post(add, {"owner": owner.pk, "name": "alices", "provider": "openai", "model": "m",
                                "base_url": "http://127.0.0.1:11434/v1"})
    assert response.status_code == 200 and "refused to connect to 127.0.0.1" in response.content.decode()
    response = admin.post(add, {"owner": "", "name": "site-ollama", "provider": "openai", "model": "m",
                                "base_url": "http://127.0.0.1:11434/v1"})
    assert response.status_code == 302 and ModelProfile.objects.filter(name="site-ollama", owner=None).exists()
