# The activity dashboard reads tokens and waits from indexes, not from each row.

import orchestrator.expressions
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('orchestrator', '0007_activity_indexes'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='job',
            name='job_activity',
        ),
        migrations.RemoveIndex(
            model_name='job',
            name='job_user_activity',
        ),
        migrations.AddField(
            model_name='job',
            name='tokens',
            field=models.GeneratedField(db_persist=True, expression=orchestrator.expressions.UsageTokens(), output_field=models.IntegerField()),
        ),
        migrations.AlterField(
            model_name='job',
            name='created_at',
            field=models.DateTimeField(auto_now_add=True),
        ),
        migrations.AddIndex(
            model_name='job',
            index=models.Index(fields=['created_at', 'status', 'orchestrator_model', 'id', 'tokens'], name='job_activity'),
        ),
        migrations.AddIndex(
            model_name='job',
            index=models.Index(fields=['user', 'created_at', 'status', 'orchestrator_model', 'id', 'tokens'], name='job_user_activity'),
        ),
        migrations.AddIndex(
            model_name='toolcall',
            index=models.Index(condition=models.Q(('decided_at__isnull', False), ('verdict', 'ask')), fields=['job', 'created_at', 'decided_at'], name='tool_call_decided'),
        ),
    ]
