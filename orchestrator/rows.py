"""Single statements for the engine's most frequent writes, without the ORM's work around each.

A running job writes its row, its tool calls and its events several times a second; building a
queryset, compiling it and running `Model.save()`'s signals and checks costs several times what
the database itself spends on such a statement. These write the same values: each field converts
its own (`pre_save` for `auto_now`, `get_db_prep_save`), so a row written here reads back exactly
as if `save()` had written it.

A statement's text depends only on the model, the fields written and the fields matched (and the
database's quoting), so it is built once for each such shape and kept; only the values are
converted on every call. Statements still go through the connection's cursor, so its execute
wrappers and query logging see each one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.operations import BaseDatabaseOperations
from django.db.models import Field, Model

# A field's `pre_save` that only reads the attribute (no `auto_now` and the like to apply).
_PLAIN_PRE_SAVE = Field.pre_save
# The limit on rows per insert that depends only on the fields and the database's limit on parameters.
_GENERIC_BATCH_SIZE = BaseDatabaseOperations.bulk_batch_size


def _reader(field: Field) -> Callable[[Model, bool], Any]:
    """`field.pre_save`, or the attribute read it amounts to when the field's class keeps Field's."""
    if type(field).pre_save is _PLAIN_PRE_SAVE:
        attname = field.attname
        return lambda instance, add: getattr(instance, attname)
    return field.pre_save


# (vendor, model, fields written, ((field matched, how many values), ...)) → (SQL, [(read, field)]
# for the fields written, the primary key's field, the fields matched)
_Update = tuple[str, list[tuple[Callable[[Model, bool], Any], Field]], Field, list[Field]]
_updates: dict[tuple[Any, ...], _Update] = {}


def _update_statement(connection: Any, model: type[Model], names: tuple[str, ...],
                      matched: tuple[tuple[str, int], ...]) -> _Update:
    key = (connection.vendor, model, names, matched)
    found = _updates.get(key)
    if found is None:
        meta = model._meta
        quote = connection.ops.quote_name
        written = [meta.get_field(name) for name in names]
        assignments = [f"{quote(field.column)} = %s" for field in written]
        conditions = [f"{quote(meta.pk.column)} = %s"]
        where_fields = []
        for name, count in matched:
            field = meta.get_field(name)
            where_fields.append(field)
            conditions.append(f"{quote(field.column)} IN ({', '.join(['%s'] * count)})")
        sql = f"UPDATE {quote(meta.db_table)} SET {', '.join(assignments)} WHERE {' AND '.join(conditions)}"
        found = _updates[key] = (sql, [(_reader(field), field) for field in written], meta.pk, where_fields)
    return found


def update(instance: Model, names: Iterable[str], *, where: Mapping[str, Any] | None = None) -> int:
    """Write the fields `names` of `instance`'s row (an `auto_now` field gets the time now), only if
    the row also matches `where` (field name → value, or a tuple of values it may have).
    Returns how many rows matched: 0 or 1."""
    connection = connections[DEFAULT_DB_ALIAS]
    where = where or {}
    wanted = {name: value if isinstance(value, tuple) else (value,) for name, value in where.items()}
    sql, written, pk, where_fields = _update_statement(
        connection, type(instance), tuple(names), tuple((name, len(values)) for name, values in wanted.items()))
    params = [field.get_db_prep_save(read(instance, False), connection) for read, field in written]
    params.append(pk.get_db_prep_value(instance.pk, connection))
    for field, values in zip(where_fields, wanted.values(), strict=True):
        params.extend(field.get_db_prep_value(v, connection) for v in values)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


# (vendor, model, returning ids) → (INSERT ... VALUES up to the columns, one row's placeholders,
# the RETURNING clause or "", [(read, field)], rows per statement: 0 for no limit, None to ask
# the database's operations each time)
_Insert = tuple[str, str, str, list[tuple[Callable[[Model, bool], Any], Field]], int | None]
_inserts: dict[tuple[Any, ...], _Insert] = {}


def _insert_statement(connection: Any, model: type[Model], returning: bool) -> _Insert:
    key = (connection.vendor, model, returning)
    found = _inserts.get(key)
    if found is None:
        meta = model._meta
        fields = [field for field in meta.concrete_fields if not field.primary_key and not field.generated]
        quote = connection.ops.quote_name
        row = f"({', '.join(['%s'] * len(fields))})"
        head = f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(field.column) for field in fields)}) VALUES "
        tail = f" RETURNING {quote(meta.pk.column)}" if returning else ""
        # The rows a statement may hold depend only on the fields where the database's operations
        # use the generic limit on parameters; elsewhere they are asked for each insert.
        per_statement = None
        if type(connection.ops).bulk_batch_size is _GENERIC_BATCH_SIZE:
            limit = connection.features.max_query_params
            per_statement = max(1, limit // len(fields)) if limit is not None and fields else 0
        found = _inserts[key] = (head, row, tail, [(_reader(field), field) for field in fields], per_statement)
    return found


def insert(objects: Sequence[Model], *, ids: bool = False) -> None:
    """Insert new rows of one model, in as few statements as the database's limit on parameters
    allows. `ids`: set each object's primary key from the database, where it can say (PostgreSQL,
    SQLite 3.35 and later, as `bulk_create` does); otherwise they stay None."""
    if not objects:
        return
    connection = connections[DEFAULT_DB_ALIAS]
    returning = bool(ids and connection.features.can_return_rows_from_bulk_insert)
    head, row, tail, fields, per_statement = _insert_statement(connection, type(objects[0]), returning)
    if per_statement is None:
        size = max(1, connection.ops.bulk_batch_size([field for _, field in fields], objects))
    else:
        size = per_statement or len(objects)
    with connection.cursor() as cursor:
        for start in range(0, len(objects), size):
            batch = objects[start:start + size]
            params = [field.get_db_prep_save(read(obj, True), connection) for obj in batch for read, field in fields]
            cursor.execute(head + ", ".join([row] * len(batch)) + tail, params)
            if returning:
                for obj, (pk,) in zip(batch, cursor.fetchall(), strict=True):
                    obj.pk = pk
                    obj._state.adding, obj._state.db = False, connection.alias
