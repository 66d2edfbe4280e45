"""Database expressions the models need."""

from __future__ import annotations

from typing import Any

from django.db.models import F, Func, IntegerField
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast, Coalesce


class UsageTokens(Func):
    """Input plus output tokens of a job's `usage`, a missing key counting 0. On SQLite, Django's
    KT() compiles to a CASE that parses the JSON up to three times per key; `json_extract` parses
    it once. Elsewhere (PostgreSQL) KT() cast to an integer is a plain `->>` already."""

    output_field = IntegerField()
    keys = ("input_tokens", "output_tokens")

    def __init__(self, usage: str = "usage", **extra: Any) -> None:
        super().__init__(F(usage), **extra)

    def as_sql(self, compiler: Any, connection: Any, **extra_context: Any) -> tuple[str, list[Any]]:
        usage = self.source_expressions[0]
        tokens = [Coalesce(Cast(KeyTextTransform(key, usage), IntegerField()), 0) for key in self.keys]
        return compiler.compile(tokens[0] + tokens[1])

    def as_sqlite(self, compiler: Any, connection: Any, **extra_context: Any) -> tuple[str, list[Any]]:
        usage, params = compiler.compile(self.source_expressions[0])
        terms = [f"COALESCE(json_extract({usage}, '$.{key}'), 0)" for key in self.keys]
        return f"({' + '.join(terms)})", [*params, *params]
