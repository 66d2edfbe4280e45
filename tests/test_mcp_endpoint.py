"""Cortex as an MCP server: /mcp on a real `manage.py serve`, reached with the SDK's own client
over streamable HTTP, authenticated with an API token."""

from __future__ import annotations

import asyncio
import time

import httpx
import httpx2
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

from orchestrator import services
from orchestrator.models import Job

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def run(coroutine):
    return asyncio.run(coroutine)


async def with_session(base: str, token: str, action):
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http:
        async with streamable_http_client(f"{base}/mcp", http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await action(session)


def test_without_a_valid_token_mcp_answers_401(cortex_server):
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        response = httpx.post(f"{cortex_server}/mcp", headers=headers, json={
            "jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"


def test_an_mcp_client_submits_a_job_reads_it_and_sees_a_pending_confirmation(cortex_server, owner, outsider,
                                                                                default_persona):
    token = services.token_create(user=owner, name="mcp")[1]
    other = services.token_create(user=outsider, name="mcp")[1]

    async def submit(session: ClientSession):
        names = {tool.name for tool in (await session.list_tools()).tools}
        assert names == {"submit_job", "get_job", "list_jobs"}  # nothing that approves or denies
        result = await session.call_tool("submit_job", {"task": "Write a note: buy milk",
                                                        "respond_with_final": False})
        assert not result.is_error, result.content
        return result.structured_content["job_id"]

    job_id = run(with_session(cortex_server, token, submit))
    job = Job.objects.get(pk=job_id)
    assert job.user == owner and job.task == "Write a note: buy milk" and job.origin == "mcp"

    deadline = time.monotonic() + 30
    while Job.objects.get(pk=job_id).status != "awaiting_confirmation":
        assert time.monotonic() < deadline, "the job never asked for confirmation"
        time.sleep(0.1)

    async def read(session: ClientSession):
        return (await session.call_tool("get_job", {"job_id": job_id}),
                await session.call_tool("list_jobs", {}))

    got, listed = run(with_session(cortex_server, token, read))
    payload = got.structured_content
    assert payload["status"] == "awaiting_confirmation"
    pending = payload["pending_confirmation"]
    assert pending["tools"] and pending["approve_at"] == f"{cortex_server}/jobs/{job_id}/"
    assert [item["job_id"] for item in listed.structured_content["jobs"]] == [job_id]

    async def peek(session: ClientSession):
        return (await session.call_tool("get_job", {"job_id": job_id}),
                await session.call_tool("list_jobs", {}))

    theirs, their_list = run(with_session(cortex_server, other, peek))
    assert theirs.is_error and "no job" in theirs.content[0].text
    assert their_list.structured_content["jobs"] == []


def test_a_submission_with_bad_input_is_a_clear_error_and_creates_nothing(cortex_server, owner, default_persona):
    token = services.token_create(user=owner, name="mcp")[1]

    async def submit(session: ClientSession):
        return await session.call_tool("submit_job", {"task": "   ", "chat_role": "chat"})

    result = run(with_session(cortex_server, token, submit))
    assert result.is_error and "task must not be empty" in result.content[0].text
    assert not Job.objects.exists()
