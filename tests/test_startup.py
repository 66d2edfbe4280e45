"""What a Cortex process has ready once Django is set up, before any event loop runs."""

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


def test_the_provider_sdks_are_imported_when_django_starts_not_by_the_first_job():
    # Importing an SDK takes seconds; done by the first job, inside the running event loop, it would
    # stall every other job's heartbeat until their leases ran out.
    env = process_env(DJANGO_SETTINGS_MODULE="cortex_site.settings")
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True,
                            timeout=120, check=True)
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"before": [], "after": list(SDKS)}
