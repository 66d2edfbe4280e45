"""Settings → Models and Settings → Personas: signed-out visitors go to sign in, other users'
profiles, personas and role settings are 404, wrong methods 405, every form needs its CSRF token;
a stored API key is never sent back in any page; and the pages do what they say, with and without
htmx."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from django.http import Http404
from django.test import Client
from django.urls import reverse

from orchestrator import roles, selectors, services
from orchestrator.models import ModelProfile, Persona, RoleAssignment
from orchestrator.providers import PROVIDERS
from orchestrator.tools.registry import registry
from tests.conftest import signed_in
from tests.fakes.openai_fake import OpenAIFake
from tests.pages import answered

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fakes_on_loopback_are_reachable(settings):
    """The fake providers listen on 127.0.0.1, which people's own profiles may reach only when the
    site allows private addresses (see test_endpoint_safety.py for when it does not)."""
    settings.CORTEX_HTTP_ALLOW_PRIVATE = True

HTMX = {"HX-Request": "true"}
KEY = "sk-live-do-not-leak-7f3a9c2e1b44"


@pytest.fixture
def fake():
    with OpenAIFake(expect_key=KEY) as server:
        yield server
    assert server.errors == []


@pytest.fixture
def objects(owner, fake):
    """One of each of alice's objects that has its own address."""
    profile = services.profile_save(by=owner, owner=owner, name="workbench", provider="openai", model="gpt-4o-mini",
                                    base_url=fake.base_url, api_key=KEY, max_rounds=4)
    services.role_assign(by=owner, owner=owner, role="poet", profile_id=profile.pk, system_append="Answer in verse.")
    persona = services.persona_save(owner=owner, name="pirate", prompt="Speak like a pirate.")
    return {"profile": profile.pk, "role": "poet", "persona": persona.pk}


def url_of(name: str, objects: dict) -> str:
    args = {
        "profile-edit": ["profile"], "profile-delete": ["profile"], "profile-check": ["profile"],
        "role-edit": ["role"], "role-unassign": ["role"],
        "persona-edit": ["persona"], "persona-default": ["persona"], "persona-delete": ["persona"],
    }.get(name, [])
    return reverse(name, args=[objects[key] for key in args])


PAGES = ["settings-models", "profile-edit", "role-edit", "settings-personas", "persona-edit"]
POSTS = ["profile-create", "profile-edit", "profile-delete", "profile-check", "role-create", "role-edit",
         "role-unassign", "persona-create", "persona-edit", "persona-default", "persona-delete"]
POST_ONLY = [name for name in POSTS if name not in PAGES]
# Enough for any of the forms, so only the address decides what happens.
EVERYTHING = {"name": "taken-over", "provider": "openai", "model": "stolen", "api_key": "sk-bobs",
              "role": "poet", "profile": "", "prompt": "Mine now.", "inject_datetime": "on"}


def unchanged(objects: dict) -> bool:
    profile = ModelProfile.objects.get(pk=objects["profile"])
    assignment = RoleAssignment.objects.get(role="poet")
    persona = Persona.objects.get(pk=objects["persona"])
    key = roles.credentials(profile.pk).api_key
    return (profile.name, profile.model, key) == ("workbench", "gpt-4o-mini", KEY) and (
        assignment.profile_id, assignment.system_append) == (objects["profile"], "Answer in verse.") and (
        persona.name, persona.prompt, persona.is_default) == ("pirate", "Speak like a pirate.", False)


# --- Who may see and change what ----------------------------------------------------------------

@pytest.mark.parametrize("name", PAGES)
def test_a_signed_out_visitor_is_sent_to_sign_in(name, objects):
    url = url_of(name, objects)
    response = Client().get(url)
    assert response.status_code == 302 and response["Location"] == f"{reverse('login')}?next={url}"


@pytest.mark.parametrize("name", POSTS)
def test_a_signed_out_visitor_cannot_post_anything(name, objects, fake):
    response = Client().post(url_of(name, objects), EVERYTHING)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert unchanged(objects) and ModelProfile.objects.count() == 1 and Persona.objects.count() == 1
    assert fake.request_count == 0


@pytest.mark.parametrize("name", ["profile-edit", "role-edit", "persona-edit"])
def test_it_hides_other_users_objects(name, objects, bob):
    response = bob.get(url_of(name, objects))
    assert response.status_code == 404 and "gpt-4o-mini" not in response.content.decode()


@pytest.mark.parametrize("name", ["profile-edit", "profile-delete", "profile-check", "role-edit", "role-unassign",
                                  "persona-edit", "persona-default", "persona-delete"])
@pytest.mark.parametrize("headers", [{}, HTMX])
def test_it_refuses_to_act_on_other_users_objects(name, headers, objects, bob, fake):
    response = bob.post(url_of(name, objects), EVERYTHING, headers=headers)
    assert response.status_code == 404
    assert unchanged(objects) and not RoleAssignment.objects.filter(owner__username="bob").exists()
    assert fake.request_count == 0  # nobody else's key was tried


def test_another_users_profile_cannot_be_assigned_to_a_role(objects, outsider, bob):
    response = bob.post(reverse("role-edit", args=["orchestrator"]), {"profile": objects["profile"]})
    assert response.status_code == 400 and "Select a valid choice" in response.content.decode()
    assert roles.role_config(outsider, "orchestrator").label_source == "environment"
    assert f'value="{objects["profile"]}"' not in bob.get(reverse("settings-models")).content.decode()


def test_site_wide_profiles_can_be_used_and_tested_but_not_changed(objects, outsider, bob, fake):
    site = services.profile_save(by=None, owner=None, name="shared", provider="openai", model="gpt-4o",
                                 base_url=fake.base_url, api_key=KEY)
    html = bob.get(reverse("settings-models")).content.decode()
    assert "shared" in html and "Site-wide" in html and "workbench" not in html
    assert reverse("profile-check", args=[site.pk]) in html and reverse("profile-edit", args=[site.pk]) not in html
    assert bob.get(reverse("profile-edit", args=[site.pk])).status_code == 404
    assert bob.post(reverse("profile-delete", args=[site.pk])).status_code == 404
    assert bob.post(reverse("profile-check", args=[site.pk]), headers=HTMX).status_code == 200
    assert bob.post(reverse("role-edit", args=["chat"]), {"profile": site.pk}).status_code == 302
    assert roles.role_config(outsider, "chat").model == "openai:gpt-4o"
    assert ModelProfile.objects.filter(pk=site.pk, owner=None).exists()


@pytest.mark.parametrize("name", POST_ONLY)
def test_a_get_on_a_post_only_address_shows_the_page_it_belongs_to(name, objects, alice, fake):
    response = alice.get(url_of(name, objects))
    page = reverse("settings-personas" if name.startswith("persona") else "settings-models")
    assert response.status_code == 303 and response["Location"] == page
    assert alice.put(url_of(name, objects)).status_code == 405
    assert unchanged(objects) and fake.request_count == 0


@pytest.mark.parametrize("name", PAGES)
def test_pages_refuse_methods_they_do_not_take(name, objects, alice):
    url = url_of(name, objects)
    assert alice.delete(url).status_code == 405
    assert alice.put(url).status_code == 405
    if name in ("settings-models", "settings-personas"):
        assert alice.post(url).status_code == 405


@pytest.mark.parametrize("name", POSTS)
def test_every_form_needs_its_csrf_token(name, objects, owner, fake):
    client = Client(enforce_csrf_checks=True)
    client.force_login(owner)
    response = client.post(url_of(name, objects), {**EVERYTHING, "name": "x", "role": "x"})
    assert response.status_code == 403
    assert unchanged(objects) and ModelProfile.objects.count() == 1 and fake.request_count == 0


@pytest.mark.parametrize("name", PAGES)
def test_every_form_on_every_page_carries_a_csrf_token(name, objects, alice):
    html = alice.get(url_of(name, objects)).content.decode()
    forms = re.findall(r"<form\b[^>]*method=\"post\"[^>]*>.*?</form>", html, re.DOTALL)
    assert len(forms) >= 2
    for form in forms:
        assert 'name="csrfmiddlewaretoken"' in form


def test_the_settings_tabs_lead_to_models_and_personas(alice):
    html = alice.get(reverse("settings-tools")).content.decode()
    assert f'href="{reverse("settings-models")}">Models</a>' in html
    assert f'href="{reverse("settings-personas")}">Personas</a>' in html
    models = alice.get(reverse("settings-models")).content.decode()
    assert f'href="{reverse("settings-models")}" aria-current="page">Models</a>' in models


# --- The key is never sent back -----------------------------------------------------------------

@pytest.fixture
def root(django_user_model) -> Client:
    return signed_in(django_user_model.objects.create_superuser("root", password="root-password-1"))


def test_a_stored_key_appears_in_no_response(owner, alice, root, fake):
    created = alice.post(reverse("profile-create"), {"name": "local", "provider": "openai", "model": "gpt-4o-mini",
                                                     "base_url": fake.base_url, "api_key": KEY})
    assert created.status_code == 302
    profile = ModelProfile.objects.get(owner=owner)
    assert roles.credentials(profile.pk).api_key == KEY and profile.api_key_encrypted
    edit = reverse("profile-edit", args=[profile.pk])
    bodies = {
        "page": alice.get(reverse("settings-models"), follow=True),
        "edit form": alice.get(edit),
        "edit form (htmx)": alice.get(edit, headers=HTMX),
        "failed edit": alice.post(edit, {"name": "local", "provider": "openai", "model": "gpt-4o-mini",
                                         "api_key": KEY, "temperature": "9"}),
        "failed edit (htmx)": alice.post(edit, {"name": "", "provider": "openai", "model": "m", "api_key": KEY},
                                         headers=HTMX),
        "failed create": alice.post(reverse("profile-create"), {"name": "local", "provider": "openai",
                                                                "model": "other", "api_key": KEY}),
        "both key fields": alice.post(edit, {"name": "local", "provider": "openai", "model": "gpt-4o-mini",
                                             "api_key": KEY, "remove_key": "on"}),
        "check": alice.post(reverse("profile-check", args=[profile.pk]), headers=HTMX),
        "check without javascript": alice.post(reverse("profile-check", args=[profile.pk]), follow=True),
        "role form": alice.get(reverse("role-edit", args=["orchestrator"])),
        "admin list": root.get(reverse("admin:orchestrator_modelprofile_changelist")),
        "admin change": root.get(reverse("admin:orchestrator_modelprofile_change", args=[profile.pk])),
        "admin failed change": root.post(reverse("admin:orchestrator_modelprofile_change", args=[profile.pk]),
                                         {"name": "local", "provider": "openai", "model": "gpt-4o-mini",
                                          "api_key": KEY, "temperature": "9"}),
    }
    statuses = {label: answered(response) for label, response in bodies.items()}
    assert statuses == {"page": 200, "edit form": 200, "edit form (htmx)": 200, "failed edit": 400,
                        "failed edit (htmx)": 400, "failed create": 400, "both key fields": 400, "check": 200,
                        "check without javascript": 200, "role form": 200, "admin list": 200,
                        "admin change": 200, "admin failed change": 200}
    for label, response in bodies.items():
        body = response.content.decode()
        assert KEY not in body, label
        assert profile.api_key_encrypted not in body, label
    assert "Key set" in bodies["page"].content.decode()
    assert "key set" in bodies["admin list"].content.decode()
    assert "Leave empty to keep the stored key." in bodies["edit form"].content.decode()
    assert "there is already a profile named" in bodies["failed create"].content.decode()
    assert "Type a new key or remove the stored one, not both." in bodies["both key fields"].content.decode()
    assert roles.credentials(profile.pk).api_key == KEY


# --- Profiles -----------------------------------------------------------------------------------

def profile_data(**changes: str) -> dict[str, str]:
    return {"name": "local", "provider": "openai", "model": "gpt-4o-mini", "base_url": "http://127.0.0.1:9/v1",
            "api_key": "", "max_rounds": "", "timeout_seconds": "", "temperature": "", **changes}


def test_a_profile_is_added_listed_edited_and_deleted(owner, alice):
    response = alice.post(reverse("profile-create"), profile_data(api_key="sk-first", max_rounds="3",
                                                                  timeout_seconds="30", temperature="0.2"),
                          headers=HTMX)
    assert response.status_code == 200 and response["HX-Redirect"] == reverse("settings-models")
    profile = ModelProfile.objects.get(owner=owner)
    assert (profile.max_rounds, profile.timeout_seconds, profile.temperature) == (3, 30, 0.2)

    html = alice.get(reverse("settings-models")).content.decode()
    assert "Profile “local” added." in html
    row = html[html.index(f'id="profile-{profile.pk}"'):]
    row = row[:row.index("</tbody>")]
    assert "OpenAI-compatible" in row and "<code>gpt-4o-mini</code>" in row and "http://127.0.0.1:9/v1" in row
    assert "Key set" in row and "3 rounds · 30 s timeout · temperature 0.2" in row

    form = alice.get(reverse("profile-edit", args=[profile.pk]), headers=HTMX).content.decode()
    assert form.lstrip().startswith('<section id="profile-form"') and 'value="gpt-4o-mini"' in form
    assert 'name="remove_key"' in form and 'type="password"' in form

    # Saved without a key: the stored one stays.
    alice.post(reverse("profile-edit", args=[profile.pk]), profile_data(model="llama3.1", max_rounds="5"))
    profile.refresh_from_db()
    assert profile.model == "llama3.1" and profile.max_rounds == 5 and profile.temperature is None
    assert roles.credentials(profile.pk).api_key == "sk-first"

    alice.post(reverse("profile-edit", args=[profile.pk]), profile_data(api_key="sk-second"))
    assert roles.credentials(profile.pk).api_key == "sk-second"
    alice.post(reverse("profile-edit", args=[profile.pk]), profile_data(remove_key="on"))
    profile.refresh_from_db()
    assert not profile.has_api_key
    assert "No key" in alice.get(reverse("settings-models")).content.decode()

    response = alice.post(reverse("profile-delete", args=[profile.pk]))
    assert response.status_code == 302 and response["Location"] == reverse("settings-models")
    assert not ModelProfile.objects.exists()


@pytest.mark.parametrize("field,value,message", [
    ("provider", "skynet", "Select a valid choice"),
    ("base_url", "ftp://example.org", "the base URL must start with http:// or https://"),
    ("temperature", "3", "less than or equal to 2"),
    ("name", "", "This field is required."),
])
def test_a_bad_profile_comes_back_with_a_message(alice, field, value, message):
    response = alice.post(reverse("profile-create"), profile_data(**{field: value}), headers=HTMX)
    html = response.content.decode()
    assert answered(response) == 400 and message in html
    assert html.lstrip().startswith('<section id="profile-form"')
    assert not ModelProfile.objects.exists()


def test_every_provider_can_be_chosen(alice):
    html = alice.get(reverse("settings-models")).content.decode()
    offered = re.findall(r'<option value="(\w+)"', html[html.index('name="provider"'):html.index("</select>")])
    assert sorted(offered) == sorted(PROVIDERS)


def test_a_bad_profile_without_javascript_shows_the_whole_page(alice):
    response = alice.post(reverse("profile-create"), profile_data(model=""))
    assert response.status_code == 400 and "<html" in response.content.decode()


def test_giving_up_an_edit_brings_back_a_fresh_form(objects, alice):
    response = alice.get(reverse("settings-models"), headers={**HTMX, "HX-Target": "profile-form"})
    html = response.content.decode()
    assert html.lstrip().startswith('<section id="profile-form"') and "Add a profile" in html


# --- Connection test ----------------------------------------------------------------------------

def test_a_connection_test_reports_success_in_place(objects, alice, fake):
    response = alice.post(reverse("profile-check", args=[objects["profile"]]), headers=HTMX)
    html = response.content.decode()
    assert response.status_code == 200
    assert html.lstrip().startswith(f'<tr id="profile-{objects["profile"]}-check"')
    assert "check-ok" in html and f"Connected to {fake.base_url}; gpt-4o-mini is available." in html
    assert [request.path for request in fake.requests] == ["/v1/models"]


def test_a_connection_test_reports_a_rejected_key_in_plain_words(owner, alice, fake):
    profile = services.profile_save(by=owner, owner=owner, name="wrong", provider="openai", model="gpt-4o-mini",
                                    base_url=fake.base_url, api_key="sk-wrong-key-123456")
    html = alice.post(reverse("profile-check", args=[profile.pk]), headers=HTMX).content.decode()
    assert "check-failed" in html and "the API key was rejected (401)" in html


def test_a_connection_test_reports_an_unreachable_endpoint(owner, alice):
    profile = services.profile_save(by=owner, owner=owner, name="gone", provider="openai", model="m",
                                    base_url="http://127.0.0.1:9/v1")
    html = alice.post(reverse("profile-check", args=[profile.pk]), headers=HTMX).content.decode()
    assert "could not connect to the model at http://127.0.0.1:9/v1" in html


def test_a_connection_test_without_javascript_comes_back_as_a_message(objects, alice, fake):
    response = alice.post(reverse("profile-check", args=[objects["profile"]]))
    assert response.status_code == 302 and response["Location"] == reverse("settings-models")
    html = alice.get(reverse("settings-models")).content.decode()
    assert re.search(r'alert-success">“workbench”: Connected to [^<]+; gpt-4o-mini is available\.<', html)

    fake.expect_key = "sk-rotated"
    html = alice.post(reverse("profile-check", args=[objects["profile"]]), follow=True).content.decode()
    assert re.search(r'alert-error">“workbench” failed the connection test: the API key was rejected \(401\)', html)


def test_the_service_checks_a_profile_with_its_stored_credentials(owner, outsider, objects, fake):
    assert services.profile_check(user=owner, profile_id=objects["profile"]).endswith("gpt-4o-mini is available.")
    assert fake.requests[-1].headers["authorization"] == f"Bearer {KEY}"
    with pytest.raises(Http404):
        services.profile_check(user=outsider, profile_id=objects["profile"])


@pytest.fixture
def trickling_endpoint() -> Iterator[str]:
    """An endpoint that starts a 200 answer and then sends one byte of it every 0.1 s."""
    stop = threading.Event()

    def answer(connection: socket.socket) -> None:
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9999\r\n\r\n")
            while not stop.wait(0.1):
                try:
                    connection.sendall(b" ")
                except OSError:
                    return

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(0.1)

        def serve() -> None:
            while not stop.is_set():
                try:
                    threading.Thread(target=answer, args=(listener.accept()[0],), daemon=True).start()
                except TimeoutError:
                    continue

        server = threading.Thread(target=serve, daemon=True)
        server.start()
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
        stop.set()
        server.join()


def test_a_check_that_never_finishes_is_cut_off(owner, alice, trickling_endpoint, monkeypatch):
    monkeypatch.setattr("orchestrator.providers.base.CHECK_TIMEOUT", 0.4)
    profile = services.profile_save(by=owner, owner=owner, name="slow", provider="openai", model="m",
                                    base_url=trickling_endpoint)
    started = time.monotonic()
    html = alice.post(reverse("profile-check", args=[profile.pk]), headers=HTMX).content.decode()
    assert "check-failed" in html and "no complete answer within 0.6 seconds" in html
    assert time.monotonic() - started < 3


def open_connections(fake: OpenAIFake) -> int:
    """Connections the fake still holds open, once it has noticed those a client closed."""
    for _ in range(100):
        if not fake._server._connections:
            break
        time.sleep(0.01)
    return len(fake._server._connections)


def test_each_check_closes_its_connections(objects, alice, fake):
    # A plain view runs the check on an event loop of its own that ends with the request: a client
    # left open there would keep its sockets until garbage collection.
    for attempt in range(1, 4):
        alice.post(reverse("profile-check", args=[objects["profile"]]), headers=HTMX)
        assert fake.request_count == attempt and open_connections(fake) == 0


# --- Roles --------------------------------------------------------------------------------------

def role_row(html: str, role: str) -> str:
    row = html[html.index(f'<tr id="role-{role}"'):]
    return row[:row.index("</tr>")]


def test_the_roles_show_the_effective_model_and_where_it_comes_from(owner, objects, alice, settings):
    settings.CORTEX_ORCHESTRATOR_MODEL = "demo:env-orchestrator"
    site = services.profile_save(by=None, owner=None, name="shared", provider="openai", model="gpt-4o")
    services.role_assign(by=None, owner=None, role="chat", profile_id=site.pk)
    services.role_assign(by=None, owner=None, role="summary", profile_id=None, inject_mode=False)
    html = alice.get(reverse("settings-models")).content.decode()
    assert re.findall(r'<tr id="role-([\w-]+)"', html) == ["orchestrator", "chat", "poet", "summary"]
    assert "demo:env-orchestrator" in role_row(html, "orchestrator")
    assert "Environment" in role_row(html, "orchestrator") and "Remove mine" not in role_row(html, "orchestrator")
    assert "shared" in role_row(html, "chat") and "Site-wide" in role_row(html, "chat")
    assert "workbench" in role_row(html, "poet") and ">You<" in role_row(html, "poet")
    assert "Remove mine" in role_row(html, "poet") and "Answer in verse." in role_row(html, "poet")
    assert 'flag flag-off">mode' in role_row(html, "summary")


def test_a_role_is_assigned_with_its_prompt_settings_and_tools(owner, objects, alice):
    form = alice.get(reverse("role-edit", args=["orchestrator"]), headers=HTMX).content.decode()
    assert form.lstrip().startswith('<section id="role-form"') and 'name="role"' not in form
    assert f'<option value="{objects["profile"]}">workbench · openai:gpt-4o-mini</option>' in form
    for tool in registry:
        assert f'value="{tool.name}"' in form

    response = alice.post(reverse("role-edit", args=["orchestrator"]), {
        "profile": objects["profile"], "system_append": "Prefer the calculator.", "inject_mode": "on",
        "tools": ["calculator", "current_time"]}, headers=HTMX)
    assert response.status_code == 200 and response["HX-Redirect"] == reverse("settings-models")
    config = roles.role_config(owner, "orchestrator")
    assert (config.model, config.label_source, config.profile_name) == ("openai:gpt-4o-mini", "yours", "workbench")
    assert (config.system_append, config.inject_datetime, config.inject_mode) == ("Prefer the calculator.", False,
                                                                                  True)
    assert config.tools == ("calculator", "current_time")

    again = alice.get(reverse("role-edit", args=["orchestrator"])).content.decode()
    assert re.search(r'<input type="checkbox" name="tools" value="calculator"[^>]*checked', again)
    assert re.search(rf'<option value="{objects["profile"]}" selected>', again)


def test_a_role_gets_an_output_limit_that_each_job_carries(owner, alice, default_persona):
    response = alice.post(reverse("role-edit", args=["chat"]), {"profile": "", "max_output_tokens": "32000",
                                                                 "inject_datetime": "on"})
    assert response.status_code == 302 and roles.role_config(owner, "chat").max_output_tokens == 32000
    page = alice.get(reverse("settings-models")).content.decode()
    assert "at most 32000 output tokens" in role_row(page, "chat")
    assert 'value="32000"' in alice.get(reverse("role-edit", args=["chat"])).content.decode()
    job = services.job_submit(user=owner, task="Hi")
    assert job.options["roles"]["chat"]["max_output_tokens"] == 32000
    assert job.options["roles"]["orchestrator"]["max_output_tokens"] is None

    refused = alice.post(reverse("role-edit", args=["chat"]), {"profile": "", "max_output_tokens": "0"}, headers=HTMX)
    assert answered(refused) == 400 and roles.role_config(owner, "chat").max_output_tokens == 32000


def test_a_custom_chat_role_is_added_and_removed(owner, alice):
    response = alice.post(reverse("role-create"), {"role": "critic", "profile": "", "inject_datetime": "on",
                                                   "inject_mode": "on", "system_append": "Be blunt."})
    assert response.status_code == 302
    assert roles.role_config(owner, "critic").system_append == "Be blunt."
    assert '<tr id="role-critic"' in alice.get(reverse("settings-models")).content.decode()

    response = alice.post(reverse("role-unassign", args=["critic"]), follow=True)
    assert "it falls back to the environment default" in response.content.decode()
    assert '<tr id="role-critic"' not in response.content.decode()
    assert alice.get(reverse("role-edit", args=["critic"])).status_code == 404


def test_removing_my_setting_falls_back_to_the_site_wide_one(owner, objects, alice):
    services.role_assign(by=None, owner=None, role="poet", profile_id=None, system_append="Site verse.")
    alice.post(reverse("role-unassign", args=["poet"]))
    config = roles.role_config(owner, "poet")
    assert (config.label_source, config.system_append) == ("site-wide", "Site verse.")
    assert alice.post(reverse("role-unassign", args=["poet"])).status_code == 404  # nothing of mine is left


@pytest.mark.parametrize("data,message", [
    ({"role": "has space"}, "Enter a valid “slug”"),
    ({"role": "critic", "tools": ["no_such_tool"]}, "Select a valid choice"),
    ({"role": "critic", "profile": "999999"}, "Select a valid choice"),
])
def test_a_bad_role_is_refused(alice, data, message):
    response = alice.post(reverse("role-create"), data, headers=HTMX)
    html = response.content.decode()
    assert answered(response) == 400 and message in html and html.lstrip().startswith('<section id="role-form"')
    assert not RoleAssignment.objects.exists()


# --- Personas -----------------------------------------------------------------------------------

def test_personas_are_added_made_default_edited_and_deleted(owner, alice, default_persona):
    response = alice.post(reverse("persona-create"), {"name": "pirate", "prompt": "Speak like a pirate."},
                          headers=HTMX)
    assert response.status_code == 200 and response["HX-Redirect"] == reverse("settings-personas")
    persona = Persona.objects.get(owner=owner)
    assert "pirate" in alice.get(reverse("jobs")).content.decode()  # the Jobs page offers it at once

    alice.post(reverse("persona-default", args=[persona.pk]))
    assert selectors.default_persona(owner) == persona
    jobs = alice.get(reverse("jobs")).content.decode()
    assert "Default (pirate)" in jobs

    form = alice.get(reverse("persona-edit", args=[persona.pk]), headers=HTMX).content.decode()
    assert form.lstrip().startswith('<section id="persona-form"') and "Speak like a pirate." in form
    alice.post(reverse("persona-edit", args=[persona.pk]), {"name": "buccaneer", "prompt": "Arr."})
    persona.refresh_from_db()
    assert (persona.name, persona.prompt, persona.is_default) == ("buccaneer", "Arr.", False)
    assert selectors.default_persona(owner) == default_persona

    job = services.job_submit(user=owner, task="Hello", persona="buccaneer")
    assert job.persona == persona

    alice.post(reverse("persona-delete", args=[persona.pk]))
    assert not Persona.objects.filter(owner=owner).exists()


def test_site_wide_personas_are_shown_read_only(alice, default_persona):
    html = alice.get(reverse("settings-personas")).content.decode()
    site = html[html.index('id="site-personas-title"'):]
    assert "assistant" in site and "Read-only" in site and "/edit/" not in site
    assert alice.get(reverse("persona-edit", args=[default_persona.pk])).status_code == 404
    assert alice.post(reverse("persona-delete", args=[default_persona.pk])).status_code == 404


@pytest.mark.parametrize("headers,fragment", [({}, False), (HTMX, True)])
def test_a_duplicate_persona_name_is_refused(owner, alice, headers, fragment):
    services.persona_save(owner=owner, name="pirate", prompt="P")
    response = alice.post(reverse("persona-create"), {"name": "pirate", "prompt": "Q"}, headers=headers)
    html = response.content.decode()
    assert answered(response) == 400 and "there is already a persona named" in html
    assert html.lstrip().startswith('<section id="persona-form"') is fragment
    assert Persona.objects.filter(owner=owner).count() == 1


# --- Admin --------------------------------------------------------------------------------------

def test_an_admin_sets_a_key_without_ever_seeing_one(root, owner):
    response = root.post(reverse("admin:orchestrator_modelprofile_add"), {
        "owner": "", "name": "site-gemini", "provider": "gemini", "model": "gemini-2.5-flash", "base_url": "",
        "api_key": KEY})
    assert response.status_code == 302
    profile = ModelProfile.objects.get(name="site-gemini")
    assert profile.owner is None and roles.credentials(profile.pk).api_key == KEY

    change = reverse("admin:orchestrator_modelprofile_change", args=[profile.pk])
    page = root.get(change).content.decode()
    assert KEY not in page and "key set" in page and 'name="api_key"' in page and "api_key_encrypted" not in page
    root.post(change, {"name": "site-gemini", "provider": "gemini", "model": "gemini-3-pro-preview",
                       "base_url": "", "api_key": ""})
    profile.refresh_from_db()
    assert profile.model == "gemini-3-pro-preview" and roles.credentials(profile.pk).api_key == KEY
    root.post(change, {"name": "site-gemini", "provider": "gemini", "model": "m", "base_url": "",
                       "remove_key": "on"})
    profile.refresh_from_db()
    assert not profile.has_api_key


def test_the_admin_keeps_profile_names_unique_per_owner(root, owner):
    services.profile_save(by=owner, owner=owner, name="local", provider="demo", model="demo")
    other = services.profile_save(by=owner, owner=owner, name="other", provider="demo", model="demo")
    response = root.post(reverse("admin:orchestrator_modelprofile_change", args=[other.pk]),
                         {"name": "local", "provider": "demo", "model": "demo", "base_url": ""})
    assert response.status_code == 200 and "already exists" in response.content.decode()
    assert ModelProfile.objects.get(pk=other.pk).name == "other"


def test_role_assignments_are_listed_read_only_in_admin(root, objects):
    listing = root.get(reverse("admin:orchestrator_roleassignment_changelist")).content.decode()
    assert "poet" in listing and "alice" in listing
    assignment = RoleAssignment.objects.get()
    assert root.post(reverse("admin:orchestrator_roleassignment_change", args=[assignment.pk]),
                     {"role": "x"}).status_code == 403


def test_admin_persona_changes_keep_one_default_per_owner(root, owner, default_persona):
    root.post(reverse("admin:orchestrator_persona_add"),
              {"owner": "", "name": "formal", "prompt": "Be formal.", "is_default": "on"})
    default_persona.refresh_from_db()
    assert Persona.objects.get(name="formal").is_default and not default_persona.is_default
