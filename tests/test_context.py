"""What each request field and role setting changes in the assembled system prompt."""

from datetime import datetime, timezone

import pytest

from orchestrator.context import MemorySelection, memory_section, system_prompt

MEMORIES = {"long": ["Lives in Lyon", "Allergic to nuts"], "mid": ["Writing a thesis on bees"],
            "short": ["Dentist on Thursday"]}
NOW = datetime(2026, 11, 24, 9, 30, tzinfo=timezone.utc)


def section(**selection) -> str:
    return memory_section(MEMORIES, MemorySelection(**selection), budget=1000)


def test_tier_three_includes_every_tier():
    text = section(tier=3)
    assert "Lives in Lyon" in text and "thesis on bees" in text and "Dentist" in text


@pytest.mark.parametrize("tier,present,absent", [
    (1, ["Lives in Lyon"], ["thesis", "Dentist"]),
    (2, ["Lives in Lyon", "thesis"], ["Dentist"]),
])
def test_tier_bounds_how_deep_memory_goes(tier, present, absent):
    text = section(tier=tier)
    assert all(word in text for word in present)
    assert not any(word in text for word in absent)


@pytest.mark.parametrize("switch,gone", [("include_long", "Lyon"), ("include_mid", "thesis"),
                                         ("include_short", "Dentist")])
def test_each_tier_can_be_switched_off(switch, gone):
    text = section(tier=3, **{switch: False})
    assert gone not in text
    assert len([w for w in ("Lyon", "thesis", "Dentist") if w in text]) == 2


def test_no_memories_means_no_section():
    assert section(tier=3, include_long=False, include_mid=False, include_short=False) == ""


def test_each_tier_is_bounded_by_the_budget():
    many = {"long": [f"fact number {n}" for n in range(100)]}
    text = memory_section(many, MemorySelection(tier=1), budget=60)
    assert "fact number 0" in text and "fact number 10" not in text


def test_the_persona_prompt_comes_first():
    prompt = system_prompt(persona_prompt="You are Inara.", memories="M", now=NOW)
    assert prompt.startswith("You are Inara.")


def test_inject_datetime_adds_the_date_and_time():
    assert "Tuesday 2026-11-24 09:30" in system_prompt(persona_prompt="P", now=NOW, inject_datetime=True)
    assert "2026-11-24" not in system_prompt(persona_prompt="P", now=NOW, inject_datetime=False)


def test_inject_mode_adds_the_mode_line():
    assert "Mode: chat." in system_prompt(persona_prompt="P", inject_mode=True)
    assert "Mode:" not in system_prompt(persona_prompt="P", inject_mode=False)


def test_off_the_record_is_always_said():
    for inject_mode in (True, False):
        prompt = system_prompt(persona_prompt="P", inject_mode=inject_mode, off_record=True)
        assert "Mode: off the record" in prompt and "Mode: chat." not in prompt


def test_system_append_comes_last():
    prompt = system_prompt(persona_prompt="P", memories="M", now=NOW, system_append="Answer in French.")
    assert prompt.endswith("Answer in French.")
