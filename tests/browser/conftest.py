"""Browser fixtures: one Cortex server (web + executor) and one Chromium for the whole browser
suite, a fresh signed-in browser context per test, and a check that no page logged an error
(a Content-Security-Policy violation included)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.test import Client
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Playwright, sync_playwright

from tests.conftest import free_port, process_env, start_process, stop_process, wait_for_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
# The README's pictures are refreshed only on request, so a test run leaves the work tree clean.
UPDATE_SCREENSHOTS = os.environ.get("CORTEX_UPDATE_SCREENSHOTS") == "1"


class LiveServer:
    """`manage.py serve` on a fixed port, so a test can restart it under an open page."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env, self.log = env, log
        self.process = None

    def start(self) -> None:
        self.process = start_process(["serve", "--port", str(self.port)], self.env, self.log)
        wait_for_port(self.port, process=self.process)

    def stop(self) -> None:
        stop_process(self.process)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def workspaces(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("workspaces")


@pytest.fixture(scope="module")
def app_server(django_db_setup, workspaces, tmp_path_factory) -> Iterator[LiveServer]:
    """Stopped when the module ends: its executor would otherwise take other tests' jobs."""
    # Only the built-in tools: the screenshots show the app as its users see it. The fake model
    # servers listen on 127.0.0.1, which people's own profiles reach only when private addresses are allowed.
    env = process_env(CORTEX_POLL_SECONDS="0.2", CORTEX_WORKSPACE_ROOT=str(workspaces), CORTEX_TOOL_MODULES="",
                      CORTEX_HTTP_ALLOW_PRIVATE="true")
    server = LiveServer(env, tmp_path_factory.mktemp("server") / "serve.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _fakes_on_loopback_are_reachable(settings):
    """As in the server: profiles the tests save for people may point at the fakes on 127.0.0.1."""
    settings.CORTEX_HTTP_ALLOW_PRIVATE = True


@pytest.fixture(scope="module")
def playwright(django_db_setup) -> Iterator[Playwright]:
    """Playwright's sync API, for one module at a time.

    While it runs it keeps an event loop marked as running on this thread, so Django would refuse
    every ORM call here (the tests' own and the database flush between them); they still run
    synchronously, so the guard is lifted until the driver stops, before other modules run.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        with sync_playwright() as driver:
            yield driver


@pytest.fixture(scope="module")
def chromium(playwright: Playwright) -> Iterator[Browser]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    try:
        yield browser
    finally:
        browser.close()


class Problems:
    """Console errors and uncaught exceptions of every page in a context."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def watch(self, page: Page) -> None:
        page.on("console", self.console)
        page.on("pageerror", lambda error: self.messages.append(f"uncaught: {error}"))

    def console(self, message: ConsoleMessage) -> None:
        if message.type == "error" or "Content Security Policy" in message.text:
            self.messages.append(f"{message.type}: {message.text}")


SignIn = Callable[..., Page]


@pytest.fixture
def sign_in(chromium: Browser, app_server: LiveServer, transactional_db) -> Iterator[SignIn]:
    """A new browser (context) signed in as `user`; every page it opened must log no error."""
    contexts: list[tuple[BrowserContext, Problems, tuple[str, ...]]] = []

    def open_as(user, *, javascript: bool = True, expected_errors: tuple[str, ...] = ()) -> Page:
        client = Client()
        client.force_login(user)
        context = chromium.new_context(base_url=app_server.url, java_script_enabled=javascript,
                                       viewport={"width": 1280, "height": 900})
        context.add_cookies([{"name": "sessionid", "value": client.cookies["sessionid"].value,
                              "url": app_server.url}])
        context.set_default_timeout(10_000)
        problems = Problems()
        context.on("page", problems.watch)
        contexts.append((context, problems, expected_errors))
        return context.new_page()

    yield open_as
    for context, problems, expected in contexts:
        context.close()
        unexpected = [m for m in problems.messages if not any(text in m for text in expected)]
        assert unexpected == [], unexpected


@pytest.fixture
def anonymous(chromium: Browser, app_server: LiveServer, transactional_db) -> Iterator[Page]:
    context = chromium.new_context(base_url=app_server.url, viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    problems = Problems()
    context.on("page", problems.watch)
    yield context.new_page()
    context.close()
    assert problems.messages == []


@pytest.fixture
def screenshot() -> Callable[[Page, str], None]:
    def save(page: Page, name: str, **options) -> None:
        # Taken either way, so a page that cannot be drawn fails the walk that shows it.
        image = page.screenshot(**options)
        if UPDATE_SCREENSHOTS:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            (SCREENSHOTS / f"{name}.png").write_bytes(image)
    return save
