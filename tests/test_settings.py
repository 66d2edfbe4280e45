"""Settings come from the environment and fail loudly on bad values."""

import re
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from cortex_site import settings as cortex_settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("raw,expected", [("1", True), ("yes", True), ("On", True), ("0", False), ("false", False),
                                          ("", True)])
def test_env_bool_reads_the_usual_spellings(monkeypatch, raw, expected):
    monkeypatch.setenv("CORTEX_FLAG", raw)
    assert cortex_settings.env_bool("CORTEX_FLAG", True) is expected


@pytest.mark.parametrize("helper,raw", [("env_bool", "maybe"), ("env_int", "ten"), ("env_float", "fast")])
def test_bad_values_are_refused_with_the_variable_named(monkeypatch, helper, raw):
    monkeypatch.setenv("CORTEX_THING", raw)
    with pytest.raises(ImproperlyConfigured, match="CORTEX_THING"):
        getattr(cortex_settings, helper)("CORTEX_THING", 1)


def test_numbers_below_their_minimum_are_refused(monkeypatch):
    monkeypatch.setenv("CORTEX_THING", "0")
    with pytest.raises(ImproperlyConfigured, match="at least 1"):
        cortex_settings.env_int("CORTEX_THING", 5, minimum=1)


def test_a_model_must_name_its_provider(monkeypatch):
    monkeypatch.setenv("CORTEX_ORCHESTRATOR_MODEL", "gpt-4o")
    with pytest.raises(ImproperlyConfigured, match="provider:model"):
        cortex_settings.env_model("CORTEX_ORCHESTRATOR_MODEL", "demo:demo")


def test_database_urls(tmp_path):
    postgres = cortex_settings.database_from_url("postgres://cortex:s%40cret@db.internal:6543/cortex?sslmode=require")
    assert (postgres["ENGINE"], postgres["NAME"], postgres["USER"], postgres["PASSWORD"], postgres["HOST"],
            postgres["PORT"]) == ("django.db.backends.postgresql", "cortex", "cortex", "s@cret", "db.internal", "6543")
    assert postgres["OPTIONS"] == {"sslmode": "require"}
    sqlite = cortex_settings.database_from_url(f"sqlite:///{tmp_path}/x.sqlite3")
    assert sqlite["NAME"] == tmp_path / "x.sqlite3"
    assert "journal_mode=WAL" in sqlite["OPTIONS"]["init_command"] and sqlite["OPTIONS"]["timeout"] > 0
    for bad in ("mysql://x/y", "postgres://host/", "sqlite://"):
        with pytest.raises(ImproperlyConfigured, match="CORTEX_DATABASE_URL"):
            cortex_settings.database_from_url(bad)


@pytest.mark.parametrize("variable,value,message", [
    ("CORTEX_LEASE_SECONDS", "soon", "CORTEX_LEASE_SECONDS must be a number"),
    ("CORTEX_REDIS_URL", "http://localhost", "CORTEX_REDIS_URL must be a redis:// URL"),
    ("CORTEX_DEBUG", "perhaps", "CORTEX_DEBUG must be true or false"),
    ("CORTEX_SECRET_KEY", "short", "at least 32 characters"),
])
def test_cortex_refuses_to_start_with_a_bad_setting(tmp_path, variable, value, message):
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "CORTEX_VAR_DIR": str(tmp_path), variable: value},
                            timeout=60)
    assert result.returncode != 0
    assert message in result.stderr


def test_a_secret_key_is_generated_once_and_kept(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "CORTEX_VAR_DIR": str(tmp_path)}
    for _ in range(2):
        subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, env=env, check=True, capture_output=True,
                       timeout=60)
    key_file = tmp_path / "secret_key"
    assert len(key_file.read_text().strip()) >= 50
    assert key_file.stat().st_mode & 0o077 == 0


def documented_production_environment() -> dict[str, str]:
    """The variables of the README's "In production" block."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### In production", 1)[1]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    return dict(re.findall(r"^(CORTEX_[A-Z_]+)=(\S+)", block, re.MULTILINE))


def test_check_deploy_is_clean_under_the_documented_production_environment(tmp_path):
    env = documented_production_environment()
    assert {"CORTEX_SECURE_COOKIES", "CORTEX_SSL_REDIRECT", "CORTEX_HSTS_SECONDS",
            "CORTEX_PROXY_SSL_HEADER"} <= set(env)
    env["CORTEX_SECRET_KEY"] = secrets.token_urlsafe(50)
    result = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "DEBUG"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "CORTEX_VAR_DIR": str(tmp_path), **env})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert "WARNINGS" not in result.stdout + result.stderr


def test_the_embedded_defaults_are_plain_http(settings):
    assert not settings.SECURE_SSL_REDIRECT and settings.SECURE_HSTS_SECONDS == 0
    assert settings.SECURE_PROXY_SSL_HEADER is None


def test_the_proxy_header_is_spelled_as_django_reads_it(monkeypatch):
    monkeypatch.setenv("CORTEX_PROXY_SSL_HEADER", "X-Forwarded-Proto")
    assert cortex_settings.env_proxy_ssl_header("CORTEX_PROXY_SSL_HEADER") == ("HTTP_X_FORWARDED_PROTO", "https")


@pytest.mark.parametrize("variable,value,message", [
    ("CORTEX_HSTS_SECONDS", "a year", "CORTEX_HSTS_SECONDS must be an integer"),
    ("CORTEX_HSTS_SECONDS", "-1", "CORTEX_HSTS_SECONDS must be at least 0"),
    ("CORTEX_SSL_REDIRECT", "sometimes", "CORTEX_SSL_REDIRECT must be true or false"),
    ("CORTEX_HSTS_PRELOAD", "sure", "CORTEX_HSTS_PRELOAD must be true or false"),
    ("CORTEX_PROXY_SSL_HEADER", "X-Forwarded-Proto: https", "CORTEX_PROXY_SSL_HEADER must be a header name"),
])
def test_production_settings_refuse_bad_values(tmp_path, variable, value, message):
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "CORTEX_VAR_DIR": str(tmp_path), variable: value},
                            timeout=60)
    assert result.returncode != 0 and message in result.stderr
