from django.db import migrations


class Migration(migrations.Migration):
    """`gemini_summary` held any provider's summary; the API keeps the old name."""

    dependencies = [
        ('orchestrator', '0005_role_max_output_tokens'),
    ]

    operations = [
        migrations.RenameField(
            model_name='job',
            old_name='gemini_summary',
            new_name='orchestrator_summary',
        ),
    ]
