"""`rows`: its reads give what the ORM's querysets they stand for give, and its writes read back
as `save()` would have written them."""

from __future__ import annotations

import datetime

import pytest
from django.db import connection, transaction
from django.db.models import F, Q
from django.db.transaction import TransactionManagementError
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from orchestrator import rows, services
from orchestrator.delivery.models import NotificationSettings
from orchestrator.models import Job, JobEvent, Memory, ModelProfile, Persona, RoleAssignment, ToolCall

pytestmark = pytest.mark.django_db


def fields_of(instance):
    return {field.attname: getattr(instance, field.attname) for field in type(instance)._meta.concrete_fields}


@pytest.fixture
def job(owner):
    return services.job_submit(user=owner, task="What time is it?")


def test_select_converts_each_value_as_values_list_does(owner, job):
    Memory.objects.create(user=owner, tier="short", content="older")
    Memory.objects.create(user=owner, tier="long", content="newer")
    read = rows.select(Memory, ("tier", "content", "updated_at"), {"user": owner.pk}, order_by=("-updated_at",),
                       limit=500)
    assert read == list(Memory.objects.filter(user=owner).order_by("-updated_at")
                        .values_list("tier", "content", "updated_at")[:500])
    assert all(isinstance(at, datetime.datetime) and timezone.is_aware(at) for *_, at in read)
    # JSON, UUIDs, datetimes and NULLs, from the job's own row.
    names = ("id", "options", "transcript", "created_at", "started_at", "response", "user")
    assert rows.select(Job, names, {"pk": str(job.pk)}) == list(Job.objects.filter(pk=job.pk).values_list(*names))


def test_select_matches_null_and_lists_of_values_and_limits(owner, outsider):
    Persona.objects.filter(owner=None).delete()  # the site's own, from a migration
    Persona.objects.create(owner=None, name="site", prompt="s", is_default=True)
    Persona.objects.create(owner=owner, name="own", prompt="o", is_default=True)
    Persona.objects.create(owner=outsider, name="theirs", prompt="t", is_default=True)
    Persona.objects.create(owner=owner, name="other", prompt="x")
    assert rows.select(Persona, ("name",), {"owner": None}) == [("site",)]
    assert sorted(rows.select(Persona, ("name",), {"owner": (owner.pk, outsider.pk)})) \
        == [("other",), ("own",), ("theirs",)]
    either = rows.select(Persona, ("name",), {"owner": (owner.pk, None), "is_default": True},
                         order_by=("owner nulls last", "name"))
    assert either == list(Persona.objects.filter(Q(owner=owner) | Q(owner=None), is_default=True)
                          .order_by(F("owner").asc(nulls_last=True), "name").values_list("name"))
    assert either == [("own",), ("site",)]
    assert rows.select(Persona, ("name",), {"owner": (owner.pk, None)}, order_by=("owner nulls last", "-name"),
                       limit=2) == [("own",), ("other",)]
    with CaptureQueriesContext(connection) as queries:
        assert rows.select(Persona, ("name",), {"owner": ()}) == []
    assert not queries.captured_queries


def test_instances_are_the_orms_own_with_their_joined_rows(owner, job):
    profile = ModelProfile.objects.create(owner=owner, name="local", provider="openai", model="m")
    with_profile = RoleAssignment.objects.create(owner=owner, role="orchestrator", profile=profile, tools=["a"])
    without = RoleAssignment.objects.create(owner=None, role="chat")
    found = {a.role: a for a in rows.instances(RoleAssignment, {"owner": (owner.pk, None),
                                                                 "role": ("orchestrator", "chat")},
                                               related=("profile",))}
    expected = {a.role: a for a in RoleAssignment.objects.select_related("profile")
                .filter(Q(owner=owner) | Q(owner=None), role__in=["orchestrator", "chat"])}
    assert set(found) == set(expected) == {"orchestrator", "chat"}
    for role, assignment in found.items():
        assert fields_of(assignment) == fields_of(expected[role])
        assert assignment._state.adding is False and assignment._state.db == "default"
    with CaptureQueriesContext(connection) as queries:
        assert fields_of(found["orchestrator"].profile) == fields_of(profile)
        assert found["chat"].profile is None
    assert not queries.captured_queries  # cached by the join, as select_related caches them
    assert found["chat"].pk == without.pk and found["orchestrator"].pk == with_profile.pk

    with transaction.atomic():
        [locked] = rows.instances(Job, {"pk": str(job.pk)}, lock="update", related=("user",))
    orm = Job.objects.select_related("user").get(pk=job.pk)
    assert fields_of(locked) == fields_of(orm) and fields_of(locked.user) == fields_of(orm.user)
    assert rows.instances(NotificationSettings, {"user": owner.pk}, order_by=("pk",), limit=1) == []
    chosen = NotificationSettings.objects.create(user=owner, events=["job.finished"])
    assert fields_of(rows.instances(NotificationSettings, {"user": owner.pk}, limit=1)[0]) == fields_of(chosen)


@pytest.mark.django_db(transaction=True)
def test_a_locking_read_locks_as_select_for_update_does(job):
    if not connection.features.has_select_for_update:
        assert rows.select(Job, ("pk",), {"pk": str(job.pk)}, lock="update")  # as the ORM: no lock, no error
        return
    with pytest.raises(TransactionManagementError):
        rows.select(Job, ("pk",), {"pk": str(job.pk)}, lock="update")
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        rows.select(Job, ("pk",), {"pk": str(job.pk)}, lock="update")
        rows.select(Job, ("pk",), {"status": ("queued", "running")}, order_by=("created_at",), limit=5,
                    lock="skip locked")
    assert queries.captured_queries[0]["sql"].endswith(" FOR UPDATE")
    assert queries.captured_queries[1]["sql"].endswith(" LIMIT 5 FOR UPDATE SKIP LOCKED")


def test_writes_read_back_as_save_wrote_them(owner, job):
    calls = [ToolCall(job=job, call_id=f"c{i}", round=1, position=i, name="current_time", args={"n": i},
                      verdict="run", status="ready") for i in range(3)]
    rows.insert(calls, ids=True)
    if connection.features.can_return_rows_from_bulk_insert:
        for call in calls:
            assert fields_of(ToolCall.objects.get(pk=call.pk)) == fields_of(call)
    call = ToolCall.objects.get(job=job, position=1)
    call.status, call.result, call.is_error = "succeeded", "ok", False
    call.finished_at = timezone.now()
    assert rows.update(call, ["status", "result", "is_error", "finished_at"]) == 1
    assert fields_of(ToolCall.objects.get(pk=call.pk)) == fields_of(call)
    before = Job.objects.get(pk=job.pk).updated_at
    assert rows.update(job, ["updated_at"], where={"last_seq": job.last_seq + 1}) == 0
    assert rows.update(job, ["updated_at"], where={"last_seq": job.last_seq, "status": ("queued", "running")}) == 1
    assert Job.objects.get(pk=job.pk).updated_at == job.updated_at > before
    many = [JobEvent(job=job, seq=10 + i, type="t", data={"i": i}) for i in range(1200)]  # past SQLite's 999 parameters
    rows.insert(many)
    assert JobEvent.objects.filter(job=job, seq__gte=10).count() == 1200


def test_the_claimable_rows_are_the_claimable_jobs(owner):
    from orchestrator import transitions

    now = timezone.now()
    times = [None, now - datetime.timedelta(seconds=5), now, now + datetime.timedelta(seconds=5)]
    for status in ("queued", "running", "awaiting_confirmation", "complete"):
        for lease in times:
            for not_before in times:
                job = services.job_submit(user=owner, task="t")
                Job.objects.filter(pk=job.pk).update(status=status, lease_expires_at=lease, not_before=not_before)
    expected = set(Job.objects.filter(transitions.claimable(now)).values_list("pk", flat=True))
    assert 0 < len(expected) < Job.objects.count()
    assert {pk for (pk,) in rows.select(Job, ("pk",), transitions.claimable_rows(now))} == expected
    first = list(Job.objects.filter(transitions.claimable(now)).order_by("created_at").values_list("pk", flat=True)[:3])
    with transaction.atomic():
        assert [pk for (pk,) in rows.select(Job, ("pk",), transitions.claimable_rows(now), order_by=("created_at",),
                                            limit=3, lock="skip locked")] == first


def test_an_object_with_its_primary_key_is_inserted_with_it_and_saved(owner):
    from orchestrator.models import Session

    session = Session(user=owner, title="t")
    rows.insert([session])
    assert session._state.adding is False and session._state.db == "default"
    assert fields_of(Session.objects.get(pk=session.pk)) == fields_of(session)
    without = Session(user=owner)
    without.pk = None
    with pytest.raises(ValueError):
        rows.insert([Session(user=owner), without])
