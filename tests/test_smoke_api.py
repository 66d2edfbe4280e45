import pytest

pytestmark = pytest.mark.django_db


def test_it_queues_a_task(api):
    response = api.post("/orchestrate", {"task": "What time is it?"})
    assert response.status_code == 202
    assert response.json()["status"] == "queued"
