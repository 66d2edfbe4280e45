"""Cortex settings, read from the environment.

Every value has a default that gives a working embedded setup (SQLite, in-memory channel
layer, jobs run inside the web process). Bad values fail loudly at start-up.
"""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be true or false, not {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, not {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_model(name: str, default: str) -> str:
    value = env_str(name, default).strip()
    provider, sep, model = value.partition(":")
    if not sep or not provider or not model:
        raise ImproperlyConfigured(f"{name} must look like provider:model (e.g. openai:gpt-4o-mini), not {value!r}")
    return value


def env_proxy_ssl_header(name: str) -> tuple[str, str] | None:
    """`X-Forwarded-Proto`: the header a TLS-terminating proxy sets to `https`, as Django's
    SECURE_PROXY_SSL_HEADER spells it (`HTTP_X_FORWARDED_PROTO`). Empty: no proxy says so."""
    raw = env_str(name).strip()
    if not raw:
        return None
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]*", raw):
        raise ImproperlyConfigured(f"{name} must be a header name such as X-Forwarded-Proto, not {raw!r}")
    return "HTTP_" + raw.upper().replace("-", "_"), "https"


def database_from_url(url: str) -> dict:
    """A Django DATABASES entry from `sqlite:///path` or `postgres://user:pass@host:port/name`."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        # sqlite:///relative/path.sqlite3 or sqlite:////absolute/path.sqlite3
        path = unquote(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else ""
        if not path:
            raise ImproperlyConfigured("CORTEX_DATABASE_URL: a sqlite URL needs a file path, e.g. sqlite:///var/cortex.sqlite3")
        return sqlite_database(Path(path) if os.path.isabs(path) else BASE_DIR / path)
    if parsed.scheme in ("postgres", "postgresql", "pgsql"):
        options = {key: values[-1] for key, values in parse_qs(parsed.query).items()}
        name = unquote(parsed.path.lstrip("/"))
        if not name:
            raise ImproperlyConfigured("CORTEX_DATABASE_URL: a postgres URL needs a database name")
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": name,
            "USER": unquote(parsed.username or ""),
            "PASSWORD": unquote(parsed.password or ""),
            "HOST": parsed.hostname or "",
            "PORT": str(parsed.port or ""),
            "OPTIONS": options,
            "CONN_MAX_AGE": 0,
            "TEST": {"NAME": f"test_{name}_{os.getpid()}"},
        }
    raise ImproperlyConfigured(f"CORTEX_DATABASE_URL: unsupported scheme {parsed.scheme!r} (use sqlite or postgres)")


def sqlite_database(path: Path) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    return {
        # Django's SQLite backend, with writers taking turns for the write lock (see its module).
        "ENGINE": "orchestrator.backends.sqlite3",
        "NAME": path,
        "OPTIONS": {
            # WAL lets readers go on while a job writes; IMMEDIATE takes the write lock at BEGIN so
            # two writers queue on the busy timeout instead of failing on lock upgrade.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
        },
        # A request's thread is kept from one request to the next (orchestrator/handler.py), and
        # so is its connection: no connection opened, set up and closed for every request.
        "CONN_MAX_AGE": 600,
        "CONN_HEALTH_CHECKS": True,
        # A file (not memory) so test servers in other processes share it; one per test run.
        "TEST": {"NAME": str(path.with_name(f"{path.stem}-test-{os.getpid()}.sqlite3"))},
    }


def email_from_url(url: str) -> dict:
    """The default mailer (Django's MAILERS) from `smtp://user:pass@host:587` (STARTTLS, required) or
    `smtps://user:pass@host:465` (TLS from the first byte). `?starttls=off` talks plain SMTP, for
    a relay on the same machine only."""
    parsed = urlparse(url)
    if parsed.scheme not in ("smtp", "smtps") or not parsed.hostname:
        raise ImproperlyConfigured("CORTEX_EMAIL_URL must look like smtp://user:password@host:587 "
                                   f"or smtps://user:password@host:465, not {url!r}")
    query = {key: values[-1].lower() for key, values in parse_qs(parsed.query).items()}
    if query.get("starttls", "on") not in ("on", "off"):
        raise ImproperlyConfigured("CORTEX_EMAIL_URL: starttls must be on or off")
    implicit = parsed.scheme == "smtps"
    try:
        port = parsed.port
    except ValueError as error:
        raise ImproperlyConfigured(f"CORTEX_EMAIL_URL: {error}") from None
    return {"BACKEND": "django.core.mail.backends.smtp.EmailBackend", "OPTIONS": {
        "host": parsed.hostname,
        "port": port or (465 if implicit else 587),
        "username": unquote(parsed.username or ""),
        "password": unquote(parsed.password or ""),
        "use_ssl": implicit,
        "use_tls": not implicit and query.get("starttls", "on") == "on",
        "timeout": 20,
    }}


VAR_DIR = Path(env_str("CORTEX_VAR_DIR", str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def load_secret_key() -> str:
    given = env_str("CORTEX_SECRET_KEY")
    if given:
        if len(given) < 32:
            raise ImproperlyConfigured("CORTEX_SECRET_KEY must be at least 32 characters long")
        return given
    key_file = VAR_DIR / "secret_key"
    if not key_file.exists():
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
    return key_file.read_text().strip()


SECRET_KEY = load_secret_key()
DEBUG = env_bool("CORTEX_DEBUG", False)
ALLOWED_HOSTS = env_list("CORTEX_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CORTEX_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "channels",
    "ninja",
    "orchestrator",
    "orchestrator.triggers",
    "orchestrator.delivery",
    "orchestrator.mcp",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "orchestrator.middleware.JsonApiErrors",
    "orchestrator.middleware.HtmxFormAnswers",
]

ROOT_URLCONF = "cortex_site.urls"
ASGI_APPLICATION = "cortex_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "django.template.context_processors.csp",
                "orchestrator.context_processors.navigation",
            ],
        },
    },
]

DATABASES = {
    "default": database_from_url(env_str("CORTEX_DATABASE_URL"))
    if env_str("CORTEX_DATABASE_URL")
    else sqlite_database(VAR_DIR / "cortex.sqlite3")
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("CORTEX_REDIS_URL")
if REDIS_URL:
    if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
        raise ImproperlyConfigured(f"CORTEX_REDIS_URL must be a redis:// URL, not {REDIS_URL!r}")
    # Doorbells over Redis pub/sub (see orchestrator/doorbell_layer.py).
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "orchestrator.doorbell_layer.DoorbellLayer",
            "CONFIG": {"url": REDIS_URL, "prefix": env_str("CORTEX_REDIS_PREFIX", "cortex")},
        }
    }
elif DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Every process sharing a SQLite file runs on this machine: doorbells over Unix datagram
    # sockets beside the file (see orchestrator/local_layer.py).
    CHANNEL_LAYERS = {"default": {"BACKEND": "orchestrator.local_layer.LocalDoorbellLayer"}}
else:
    # PostgreSQL without Redis: processes may be on other machines, so doorbells stay in-process.
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("CORTEX_TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "jobs"
LOGOUT_REDIRECT_URL = "login"

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = env_bool("CORTEX_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
# Behind HTTPS (see "In production" in the README). Off by default: the embedded setup is plain HTTP.
SECURE_PROXY_SSL_HEADER = env_proxy_ssl_header("CORTEX_PROXY_SSL_HEADER")
SECURE_SSL_REDIRECT = env_bool("CORTEX_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env_int("CORTEX_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("CORTEX_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("CORTEX_HSTS_PRELOAD", False)

from django.utils.csp import CSP  # noqa: E402  (settings module: keep the import next to its use)

SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF, CSP.NONCE],
    "style-src": [CSP.SELF],
    "img-src": [CSP.SELF, "data:"],
    "connect-src": [CSP.SELF],
    "frame-ancestors": [CSP.NONE],
    "form-action": [CSP.SELF],
}

# Requests: the API refuses bodies above this size with 413 before parsing them.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("CORTEX_MAX_REQUEST_BYTES", 1_000_000, minimum=1024)

# --- Cortex ---------------------------------------------------------------------------------
CORTEX_MAX_TASK_CHARS = env_int("CORTEX_MAX_TASK_CHARS", 20000, minimum=1)
CORTEX_ORCHESTRATOR_MODEL = env_model("CORTEX_ORCHESTRATOR_MODEL", "demo:demo")
CORTEX_CHAT_MODEL = env_model("CORTEX_CHAT_MODEL", "demo:demo")
OPENAI_BASE_URL = env_str("OPENAI_BASE_URL", "https://api.openai.com/v1")
OPENAI_API_KEY = env_str("OPENAI_API_KEY")
GEMINI_API_KEY = env_str("GEMINI_API_KEY")
CORTEX_GEMINI_BASE_URL = env_str("CORTEX_GEMINI_BASE_URL")
ANTHROPIC_API_KEY = env_str("ANTHROPIC_API_KEY")
CORTEX_ANTHROPIC_BASE_URL = env_str("CORTEX_ANTHROPIC_BASE_URL")

CORTEX_ENCRYPTION_KEY = env_str("CORTEX_ENCRYPTION_KEY")
CORTEX_DEFAULT_TIER = env_int("CORTEX_DEFAULT_TIER", 3, minimum=1)
if CORTEX_DEFAULT_TIER > 3:
    raise ImproperlyConfigured("CORTEX_DEFAULT_TIER must be 1, 2 or 3")
CORTEX_MEMORY_CHARS = env_int("CORTEX_MEMORY_CHARS", 6000, minimum=0)
CORTEX_RUN_JOBS_IN_WEB = env_bool("CORTEX_RUN_JOBS_IN_WEB", True)
# `runjobs` processes `serve` starts beside the web: a number, or `auto` (one per core beyond the
# first where a shared channel layer carries doorbells between processes; none otherwise, and then
# the web process runs jobs itself).
CORTEX_WEB_WORKERS = env_str("CORTEX_WEB_WORKERS", "auto").strip().lower()
if CORTEX_WEB_WORKERS != "auto" and not (CORTEX_WEB_WORKERS.isdigit()):
    raise ImproperlyConfigured("CORTEX_WEB_WORKERS must be auto or a whole number")
CORTEX_EXECUTOR_CONCURRENCY = env_int("CORTEX_EXECUTOR_CONCURRENCY", 500, minimum=1)
# HTTP requests one web process handles at once; past it, requests are answered 503 + Retry-After.
CORTEX_MAX_REQUESTS_IN_FLIGHT = env_int("CORTEX_MAX_REQUESTS_IN_FLIGHT", 64, minimum=1)
# Requests a web process runs on threads at once; the rest of those in flight wait for one.
CORTEX_REQUEST_THREADS = env_int("CORTEX_REQUEST_THREADS", 8, minimum=1)
CORTEX_LEASE_SECONDS = env_float("CORTEX_LEASE_SECONDS", 30.0, minimum=0.5)
CORTEX_POLL_SECONDS = env_float("CORTEX_POLL_SECONDS", 1.0, minimum=0.01)
CORTEX_MAX_ROUNDS = env_int("CORTEX_MAX_ROUNDS", 12, minimum=1)
# Tool calls run per model turn; the calls past it get an error result instead of running.
CORTEX_MAX_CALLS_PER_TURN = env_int("CORTEX_MAX_CALLS_PER_TURN", 16, minimum=1)
CORTEX_MODEL_TIMEOUT = env_float("CORTEX_MODEL_TIMEOUT", 120.0, minimum=0.1)
CORTEX_MODEL_ATTEMPTS = env_int("CORTEX_MODEL_ATTEMPTS", 4, minimum=1)
CORTEX_RETRY_BASE_SECONDS = env_float("CORTEX_RETRY_BASE_SECONDS", 1.0, minimum=0.0)
CORTEX_RETRY_MAX_SECONDS = env_float("CORTEX_RETRY_MAX_SECONDS", 60.0, minimum=0.0)
CORTEX_HISTORY_CHARS = env_int("CORTEX_HISTORY_CHARS", 24000, minimum=0)
CORTEX_WORKSPACE_ROOT = Path(env_str("CORTEX_WORKSPACE_ROOT", str(VAR_DIR / "workspaces")))
CORTEX_HTTP_ALLOW_PRIVATE = env_bool("CORTEX_HTTP_ALLOW_PRIVATE", False)
# Schedules: how often each executor looks for due ones; how long after its due time a firing
# still counts as on time.
CORTEX_SCHEDULE_TICK_SECONDS = env_float("CORTEX_SCHEDULE_TICK_SECONDS", 5.0, minimum=0.05)
CORTEX_SCHEDULE_LATE_SECONDS = env_float("CORTEX_SCHEDULE_LATE_SECONDS", 60.0, minimum=1.0)
# A file holding the ISO time schedules take for now, for tests and demonstrations (see
# orchestrator/triggers/clock.py); unset: the real clock.
CORTEX_CLOCK_FILE = env_str("CORTEX_CLOCK_FILE")
# Inbound webhooks: the defaults of a new hook's body limit and deliveries per minute.
CORTEX_HOOK_MAX_BYTES = env_int("CORTEX_HOOK_MAX_BYTES", 262_144, minimum=1024)
CORTEX_HOOK_PER_MINUTE = env_int("CORTEX_HOOK_PER_MINUTE", 30, minimum=1)

# Completion callbacks and notifications (orchestrator/delivery). The public address makes the
# links in notifications; a delivery that fails is tried again after the backoff, doubled each
# time up to its longest wait, until it has been tried CORTEX_DELIVERY_ATTEMPTS times.
CORTEX_PUBLIC_URL = env_str("CORTEX_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/")
if not re.match(r"^https?://[^\s/]+", CORTEX_PUBLIC_URL):
    raise ImproperlyConfigured(f"CORTEX_PUBLIC_URL must be an http(s) address, not {CORTEX_PUBLIC_URL!r}")
CORTEX_DELIVERY_BACKOFF_SECONDS = env_float("CORTEX_DELIVERY_BACKOFF_SECONDS", 5.0, minimum=0.0)
CORTEX_DELIVERY_BACKOFF_MAX_SECONDS = env_float("CORTEX_DELIVERY_BACKOFF_MAX_SECONDS", 3600.0, minimum=0.0)
CORTEX_DELIVERY_ATTEMPTS = env_int("CORTEX_DELIVERY_ATTEMPTS", 16, minimum=1)
CORTEX_DELIVERY_TIMEOUT = env_float("CORTEX_DELIVERY_TIMEOUT", 15.0, minimum=0.1)
# A tool call that waits this many seconds for a person is denied as expired; unset: never.
CORTEX_CONFIRMATION_TTL = env_int("CORTEX_CONFIRMATION_TTL", 0, minimum=0) or None
CORTEX_EMAIL_URL = env_str("CORTEX_EMAIL_URL")
# Without it there is no mailer (on purpose, so Django's check that says so is quiet), and e-mail
# notifications cannot be chosen.
MAILERS = {"default": email_from_url(CORTEX_EMAIL_URL)} if CORTEX_EMAIL_URL else {}
SILENCED_SYSTEM_CHECKS = [] if CORTEX_EMAIL_URL else ["mail.W001"]
DEFAULT_FROM_EMAIL = env_str("CORTEX_EMAIL_FROM", "cortex@localhost")
# Extra modules whose @tool declarations join the built-in ones (a site's own tools).
CORTEX_TOOL_MODULES = env_list("CORTEX_TOOL_MODULES", [])
# MCP tool servers: how long a connection may take to open, and how much of a tool's output the
# model reads (the rest is cut, saying so).
CORTEX_MCP_CONNECT_SECONDS = env_float("CORTEX_MCP_CONNECT_SECONDS", 20.0, minimum=0.1)
CORTEX_MCP_MAX_OUTPUT_CHARS = env_int("CORTEX_MCP_MAX_OUTPUT_CHARS", 20000, minimum=100)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("CORTEX_LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}
