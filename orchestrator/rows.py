"""Single statements for the engine's most frequent writes, without the ORM's work around each.

A running job writes its row, its tool calls and its events several times a second; building a
queryset, compiling it and running `Model.save()`'s signals and checks costs several times what
the database itself spends on such a statement. These write the same values: each field converts
its own (`pre_save` for `auto_now`, `get_db_prep_save`), so a row written here reads back exactly
as if `save()` had written it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from django.db import connection
from django.db.models import Model


def update(instance: Model, names: Iterable[str], *, where: Mapping[str, Any] | None = None) -> int:
    """Write the fields `names` of `instance`'s row (an `auto_now` field gets the time now), only if
    the row also matches `where` (field name → value, or a tuple of values it may have).
    Returns how many rows matched: 0 or 1."""
    meta = instance._meta
    quote = connection.ops.quote_name
    assignments, params = [], []
    for name in names:
        field = meta.get_field(name)
        assignments.append(f"{quote(field.column)} = %s")
        params.append(field.get_db_prep_save(field.pre_save(instance, False), connection))
    conditions = [f"{quote(meta.pk.column)} = %s"]
    params.append(meta.pk.get_db_prep_value(instance.pk, connection))
    for name, value in (where or {}).items():
        field = meta.get_field(name)
        values = value if isinstance(value, tuple) else (value,)
        conditions.append(f"{quote(field.column)} IN ({', '.join(['%s'] * len(values))})")
        params.extend(field.get_db_prep_value(v, connection) for v in values)
    sql = f"UPDATE {quote(meta.db_table)} SET {', '.join(assignments)} WHERE {' AND '.join(conditions)}"
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


def insert(objects: Sequence[Model], *, ids: bool = False) -> None:
    """Insert new rows of one model, in as few statements as the database's limit on parameters
    allows. `ids`: set each object's primary key from the database, where it can say (PostgreSQL,
    SQLite 3.35 and later, as `bulk_create` does); otherwise they stay None."""
    if not objects:
        return
    meta = objects[0]._meta
    fields = [field for field in meta.concrete_fields if not field.primary_key and not field.generated]
    quote = connection.ops.quote_name
    row = f"({', '.join(['%s'] * len(fields))})"
    head = f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(field.column) for field in fields)}) VALUES "
    returning = ids and connection.features.can_return_rows_from_bulk_insert
    tail = f" RETURNING {quote(meta.pk.column)}" if returning else ""
    size = max(1, connection.ops.bulk_batch_size(fields, objects))
    with connection.cursor() as cursor:
        for start in range(0, len(objects), size):
            batch = objects[start:start + size]
            params = [field.get_db_prep_save(field.pre_save(obj, True), connection) for obj in batch for field in fields]
            cursor.execute(head + ", ".join([row] * len(batch)) + tail, params)
            if returning:
                for obj, (pk,) in zip(batch, cursor.fetchall(), strict=True):
                    obj.pk = pk
                    obj._state.adding, obj._state.db = False, connection.alias
