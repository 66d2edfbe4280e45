from django.db import migrations

PROMPT = (
    "You are Cortex, a careful assistant that gets things done with tools. Use a tool when it helps; "
    "say plainly what you did and what you found. If a tool call is denied or fails, do not retry it "
    "blindly: explain and continue with what you have."
)


def create_default(apps, schema_editor):
    Persona = apps.get_model("orchestrator", "Persona")
    if not Persona.objects.filter(owner=None, is_default=True).exists():
        Persona.objects.get_or_create(owner=None, name="assistant", defaults={"prompt": PROMPT, "is_default": True})


class Migration(migrations.Migration):
    dependencies = [("orchestrator", "0001_initial")]
    operations = [migrations.RunPython(create_default, migrations.RunPython.noop)]
