"""What a Cortex process has ready once Django is set up, before any event loop runs, and how it
imports a provider's SDK that it did not import at start-up."""

import json
import subprocess
import sys

from tests.conftest import ROOT, process_env

SDKS = ("openai", "anthropic", "google.genai", "orchestrator.providers.openai_compat",
        "orchestrator.providers.anthropic", "orchestrator.providers.gemini")

PROBE = f"""
import json, sys
import django
before = [name for name in {SDKS!r} if name in sys.modules]
django.setup()
after = [name for name in {SDKS!r} if name in sys.modules]
print(json.dumps({{"before": before, "after": after}}))
"""

# Imports the Gemini SDK the way the engine does when a job's model needs it, while another task
# counts the turns the event loop takes meanwhile.
FIRST_USE = """
import asyncio, json, sys
import django
django.setup()
from orchestrator import providers

async def main():
    turns = 0
    async def ticking():
        nonlocal turns
        while True:
            await asyncio.sleep(0)
            turns += 1
    ticker = asyncio.create_task(ticking())
    await asyncio.sleep(0)
    before = "google.genai" in sys.modules
    counted = turns
    await providers.loaded("gemini:gemini-2.5-flash")
    during = turns - counted
    ticker.cancel()
    provider, model = providers.resolve("gemini:gemini-2.5-flash", api_key="k")
    print(json.dumps({"before": before, "after": "google.genai" in sys.modules, "turns_during": during,
                      "label": provider.label(model)}))

asyncio.run(main())
"""


def probe(script: str, **env: str) -> dict:
    result = subprocess.run([sys.executable, "-c", script], env=process_env(DJANGO_SETTINGS_MODULE="cortex_site.settings",
                                                                            **env),
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_configured_models_providers_are_imported_when_django_starts_and_no_other():
    # Importing an SDK takes seconds; done by the first job, inside the running event loop, it would
    # stall every other job's heartbeat until their leases ran out. An SDK no configured model
    # uses is tens of MiB the process need not hold.
    seen = probe(PROBE, CORTEX_ORCHESTRATOR_MODEL="openai:gpt-4o-mini", CORTEX_CHAT_MODEL="anthropic:claude")
    assert seen == {"before": [], "after": ["openai", "anthropic", "orchestrator.providers.openai_compat",
                                            "orchestrator.providers.anthropic"]}


def test_with_the_demo_model_configured_no_sdk_is_imported_at_start_up():
    seen = probe(PROBE, CORTEX_ORCHESTRATOR_MODEL="demo:demo", CORTEX_CHAT_MODEL="demo:demo")
    assert seen == {"before": [], "after": []}


def test_a_provider_first_used_by_a_job_is_imported_without_stalling_the_event_loop():
    # A model profile may name a provider no setting does: its SDK is imported on a thread while
    # the loop keeps turning (every other job and every lease's heartbeat with it).
    seen = probe(FIRST_USE, CORTEX_ORCHESTRATOR_MODEL="demo:demo", CORTEX_CHAT_MODEL="demo:demo")
    assert seen["before"] is False and seen["after"] is True
    assert seen["turns_during"] > 0
    assert seen["label"] == "Gemini · gemini-2.5-flash"
