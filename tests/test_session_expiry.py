"""An htmx request after the session ended sends the whole page to sign in, and signing in brings
the person back to the page they were on, not to the address htmx posted to."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from orchestrator.models import ToolCall
from tests.test_views import POSTS, awaiting_job, objects, url_of  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)


def htmx_from(page: str) -> dict[str, str]:
    return {"HX-Request": "true", "HX-Current-URL": page}


@pytest.mark.parametrize("name", POSTS)
def test_an_htmx_request_without_a_session_sends_the_page_to_sign_in(name, objects):
    job_page = reverse("job-detail", args=[objects["job"]])
    response = Client().post(url_of(name, objects), {"task": "x"}, headers=htmx_from(f"http://testserver{job_page}"))
    assert response.status_code == 200 and response.content == b""
    assert response["HX-Redirect"] == f"{reverse('login')}?next={job_page.replace('/', '%2F')}"
    assert ToolCall.objects.get(pk=objects["call"]).decision == ""


@pytest.mark.parametrize("current", ["https://evil.example/jobs/", "https://testserver/jobs/", "//evil.example/",
                                     "not a url", None])
def test_it_returns_only_to_a_page_of_this_site(current, objects):
    headers = {"HX-Request": "true", **({"HX-Current-URL": current} if current else {})}
    response = Client().post(url_of("call-approve", objects), headers=headers)
    assert response["HX-Redirect"] == f"{reverse('login')}?next=%2Fjobs%2F"


def test_a_query_string_on_the_page_is_kept(objects):
    response = Client().get(reverse("jobs"), headers=htmx_from("http://testserver/jobs/?status=error&page=2"))
    assert response["HX-Redirect"] == f"{reverse('login')}?next=%2Fjobs%2F%3Fstatus%3Derror%26page%3D2"


def test_a_request_without_htmx_is_redirected_as_before(objects):
    url = url_of("job-detail", objects)
    response = Client().get(url)
    assert response.status_code == 302 and response["Location"] == f"{reverse('login')}?next={url}"
    assert "HX-Redirect" not in response


def test_after_signing_in_the_person_is_back_on_the_job_page(owner, objects):
    browser = Client()
    job_page = reverse("job-detail", args=[objects["job"]])
    sent_to = browser.post(url_of("call-approve", objects), headers=htmx_from(f"http://testserver{job_page}"))
    login_page = browser.get(sent_to["HX-Redirect"])
    assert login_page.status_code == 200 and f'value="{job_page}"' in login_page.content.decode()
    signed_in = browser.post(sent_to["HX-Redirect"], {"username": "alice", "password": "alice-password-1",
                                                      "next": job_page})
    assert signed_in.status_code == 302 and signed_in["Location"] == job_page
    assert browser.get(job_page).status_code == 200
