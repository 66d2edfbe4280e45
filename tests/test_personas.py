"""Personas: site-wide ones and a user's own, one default each; a user's own wins by name."""

import pytest

from orchestrator import selectors, services

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_users_own_persona_wins_over_a_site_wide_one_of_the_same_name(owner, outsider, default_persona):
    services.persona_save(owner=owner, name="assistant", prompt="You are Alice's assistant.")
    assert selectors.persona_by_name(owner, "assistant").prompt == "You are Alice's assistant."
    assert selectors.persona_by_name(outsider, "assistant") == default_persona


def test_there_is_one_default_per_owner(owner, default_persona):
    first = services.persona_save(owner=owner, name="calm", prompt="Calm.", is_default=True)
    second = services.persona_save(owner=owner, name="brisk", prompt="Brisk.", is_default=True)
    first.refresh_from_db()
    assert not first.is_default and second.is_default
    assert selectors.default_persona(owner) == second
    default_persona.refresh_from_db()
    assert default_persona.is_default  # the site-wide default is untouched


def test_a_job_speaks_with_the_chosen_persona(owner, default_persona):
    services.persona_save(owner=owner, name="pirate", prompt="Speak like a pirate.")
    job = services.job_submit(user=owner, task="Hello", persona="pirate")
    assert job.system_prompt.startswith("Speak like a pirate.")
    assert services.job_submit(user=owner, task="Hello").system_prompt.startswith(default_persona.prompt)


def test_another_users_persona_cannot_be_used_or_changed(owner, outsider, default_persona):
    mine = services.persona_save(owner=owner, name="secret", prompt="Mine.")
    with pytest.raises(services.Invalid, match="unknown persona"):
        services.job_submit(user=outsider, task="Hi", persona="secret")
    with pytest.raises(services.NotFound):
        services.persona_save(owner=outsider, name="secret", prompt="Stolen.", persona_id=mine.pk)
    with pytest.raises(services.NotFound):
        services.persona_delete(owner=outsider, persona_id=mine.pk)


@pytest.mark.parametrize("name", ["", "has space", "x" * 65])
def test_bad_persona_names_are_refused(owner, name):
    with pytest.raises(services.Invalid):
        services.persona_save(owner=owner, name=name, prompt="P")
