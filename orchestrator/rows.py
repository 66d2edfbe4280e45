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
from dataclasses import dataclass
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.operations import BaseDatabaseOperations
from django.db.models import Field, Model
from django.db.models.query import DEFAULT_FETCH_MODE
from django.db.transaction import TransactionManagementError

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


def update_values(model: type[Model], pk: Any, values: Mapping[str, Any]) -> int:
    """`model.objects.filter(pk=pk).update(**values)` for plain values (no expressions): each is
    converted by its field's `get_db_prep_save` as there, with no `auto_now` applied."""
    connection = connections[DEFAULT_DB_ALIAS]
    sql, written, key, _ = _update_statement(connection, model, tuple(values), ())
    params = [field.get_db_prep_save(value, connection)
              for (_, field), value in zip(written, values.values(), strict=True)]
    params.append(key.get_db_prep_value(pk, connection))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.rowcount


# (vendor, model, returning ids, with primary keys) → (INSERT ... VALUES up to the columns, one
# row's placeholders, the RETURNING clause or "", [(read, field)], rows per statement: 0 for no
# limit, None to ask the database's operations each time)
_Insert = tuple[str, str, str, list[tuple[Callable[[Model, bool], Any], Field]], int | None]
_inserts: dict[tuple[Any, ...], _Insert] = {}


def _insert_statement(connection: Any, model: type[Model], returning: bool, with_pk: bool) -> _Insert:
    key = (connection.vendor, model, returning, with_pk)
    found = _inserts.get(key)
    if found is None:
        meta = model._meta
        fields = [field for field in meta.concrete_fields
                  if (with_pk or not field.primary_key) and not field.generated]
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
    allows. Either every object has its primary key (a UUID's default, say), written with the
    rest, or none has. `ids`: set each object's primary key from the database, where it can say
    (PostgreSQL, SQLite 3.35 and later, as `bulk_create` does); otherwise they stay None. An object
    with its primary key (given, or from the database) is then saved, as `bulk_create` leaves it."""
    if not objects:
        return
    connection = connections[DEFAULT_DB_ALIAS]
    with_pk = objects[0].pk is not None
    if any((obj.pk is not None) != with_pk for obj in objects):
        raise ValueError("rows.insert: either every object has its primary key or none has")
    returning = bool(ids and not with_pk and connection.features.can_return_rows_from_bulk_insert)
    head, row, tail, fields, per_statement = _insert_statement(connection, type(objects[0]), returning, with_pk)
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
            elif with_pk:
                for obj in batch:
                    obj._state.adding, obj._state.db = False, connection.alias


# (vendor, model, fields read, ((field matched, shape), ...), order, limited, lock) → (SQL,
# [(converters, column)] for the fields read, the fields matched, whether it locks rows)
_Select = tuple[str, list[tuple[list[Callable[..., Any]], Any]], list[Field], bool]
_selects: dict[tuple[Any, ...], _Select] = {}
_MAX_KEPT = 2000


@dataclass(frozen=True)
class Below:
    """A `where` value: less than `value` (`or_equal`: or equal to it); `or_null`: or NULL."""

    value: Any
    or_equal: bool = False
    or_null: bool = False


def _shape(value: Any) -> tuple[bool, int | str]:
    """(matches NULL, how many values it is compared with: -1 for one, with =, or the operator
    it is compared with) of a `where` value."""
    if value is None:
        return True, 0
    if isinstance(value, tuple):
        return None in value, sum(1 for v in value if v is not None)
    if isinstance(value, Below):
        return value.or_null, "<=" if value.or_equal else "<"
    return False, -1


def _field(meta: Any, name: str) -> Field:
    return meta.pk if name == "pk" else meta.get_field(name)


def _select_statement(connection: Any, model: type[Model], names: tuple[str, ...],
                      matched: tuple[tuple[str, tuple[bool, int | str]], ...], order_by: tuple[str, ...],
                      limited: bool, lock: str, related: tuple[str, ...]) -> _Select:
    key = (connection.vendor, model, names, matched, order_by, limited, lock, related)
    found = _selects.get(key)
    if found is not None:
        return found
    meta = model._meta
    quote = connection.ops.quote_name
    table = quote(meta.db_table)
    read, joins = [], []
    for name in names:
        read.append(_field(meta, name).get_col(meta.db_table))
    for name in related:
        # As `select_related(name)` joins it: inner when the key may not be NULL, else left outer.
        field = meta.get_field(name)
        other = field.related_model._meta
        join = "LEFT OUTER JOIN" if field.null else "INNER JOIN"
        joins.append(f" {join} {quote(other.db_table)} ON ({table}.{quote(field.column)} = "
                     f"{quote(other.db_table)}.{quote(field.target_field.column)})")
        read.extend(related_field.get_col(other.db_table) for related_field in other.concrete_fields)
    read = [(connection.ops.get_db_converters(column) + column.get_db_converters(connection), column)
            for column in read]
    conditions, where_fields = [], []
    for name, (null, count) in matched:
        field = _field(meta, name)
        where_fields.append(field)
        column = f"{table}.{quote(field.column)}"
        if count == -1:
            conditions.append(f"{column} = %s")
            continue
        either = [f"{column} IS NULL"] if null else []
        if isinstance(count, str):
            either.append(f"{column} {count} %s")
        elif count:
            either.append(f"{column} IN ({', '.join(['%s'] * count)})")
        conditions.append(either[0] if len(either) == 1 else f"({' OR '.join(either)})")
    ordering = []
    for spec in order_by:
        name, _, nulls = spec.partition(" ")
        column = f"{table}.{quote(_field(meta, name.lstrip('-')).column)}"
        direction = "DESC" if name.startswith("-") else "ASC"
        if nulls == "nulls last":
            if connection.features.supports_order_by_nulls_modifier:
                ordering.append(f"{column} {direction} NULLS LAST")
            else:
                ordering.append(f"{column} IS NULL, {column} {direction}")
        else:
            ordering.append(f"{column} {direction}")
    sql = (f"SELECT {', '.join(f'{quote(column.alias)}.{quote(column.target.column)}' for _, column in read)} "
           f"FROM {table}{''.join(joins)}")
    if conditions:
        sql += f" WHERE {' AND '.join(conditions)}"
    if ordering:
        sql += f" ORDER BY {', '.join(ordering)}"
    if limited:
        sql += " LIMIT %s"
    if lock and connection.features.has_select_for_update:
        sql += " " + connection.ops.for_update_sql(skip_locked=lock == "skip locked")
    else:
        lock = ""
    found = (sql, read, where_fields, bool(lock))
    if len(_selects) < _MAX_KEPT:  # lists of ever more lengths would each make one
        _selects[key] = found
    return found


def select(model: type[Model], names: Sequence[str], where: Mapping[str, Any] | None = None, *,
           order_by: Sequence[str] = (), limit: int | None = None, lock: str = "",
           related: Sequence[str] = ()) -> list[tuple[Any, ...]]:
    """The fields `names` of the rows of `model` that match `where`, as `values_list(*names)`
    would read them (each value converted as the ORM converts it).

    `where`: field name → a value (=), None (IS NULL), a tuple of values (IN; a None among them
    also matches NULL) or a `Below`. `order_by`: field names, "-name" for descending, "name nulls
    last" as `F(name).asc(nulls_last=True)`. `lock`: "update" or "skip locked", as
    `select_for_update()` (with `skip_locked=True`), which locks nothing on a database without row
    locks (SQLite).
    `related`: foreign keys whose rows are joined as `select_related` joins them, each adding all
    its model's concrete fields after `names`."""
    if lock not in ("", "update", "skip locked"):
        raise ValueError(f"rows.select: lock must be \"update\" or \"skip locked\", not {lock!r}")
    connection = connections[DEFAULT_DB_ALIAS]
    where = where or {}
    if any(value == () for value in where.values()):
        return []  # IN of nothing matches nothing: the ORM does not ask the database either
    sql, read, where_fields, locks = _select_statement(
        connection, model, tuple(names), tuple((name, _shape(value)) for name, value in where.items()),
        tuple(order_by), limit is not None, lock, tuple(related))
    if locks and connection.get_autocommit():
        raise TransactionManagementError("select_for_update cannot be used outside of a transaction.")
    params: list[Any] = []
    for field, value in zip(where_fields, where.values(), strict=True):
        if isinstance(value, Below):
            value = value.value
        for v in value if isinstance(value, tuple) else (value,):
            if v is not None:
                params.append(field.get_db_prep_value(v, connection))
    if limit is not None:
        params.append(limit)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        found = cursor.fetchall()
    converting = [(i, converters, column) for i, (converters, column) in enumerate(read) if converters]
    if not converting:
        return [tuple(row) for row in found]
    result = []
    for row in found:
        values = list(row)
        for i, converters, column in converting:
            value = values[i]
            for converter in converters:
                value = converter(value, column, connection)
            values[i] = value
        result.append(tuple(values))
    return result


def instances(model: type[Model], where: Mapping[str, Any] | None = None, *, order_by: Sequence[str] = (),
              limit: int | None = None, lock: str = "", related: Sequence[str] = ()) -> list[Model]:
    """The rows of `model` that match `where` (see `select`) as instances, as the ORM builds them
    from a queryset's rows (`from_db`, every concrete field loaded), with the rows of the foreign
    keys `related` joined and cached on them as `select_related` does (None for a NULL key)."""
    names = _attnames(model)
    joined = [(model._meta.get_field(name), _attnames(model._meta.get_field(name).related_model)) for name in related]
    alias, built = DEFAULT_DB_ALIAS, []
    for values in select(model, names, where, order_by=order_by, limit=limit, lock=lock, related=related):
        instance = model.from_db(alias, names, values[:len(names)], fetch_mode=DEFAULT_FETCH_MODE)
        start = len(names)
        for field, related_names in joined:
            row = values[start:start + len(related_names)]
            start += len(related_names)
            other = field.related_model
            pk_at = related_names.index(other._meta.pk.attname)
            found = None if row[pk_at] is None else other.from_db(alias, related_names, row,
                                                                   fetch_mode=DEFAULT_FETCH_MODE)
            field.set_cached_value(instance, found)
            if found is not None and field.unique:  # a one-to-one knows its way back
                field.remote_field.set_cached_value(found, instance)
        built.append(instance)
    return built


_concrete: dict[type[Model], tuple[str, ...]] = {}


def _attnames(model: type[Model]) -> tuple[str, ...]:
    names = _concrete.get(model)
    if names is None:
        names = _concrete[model] = tuple(field.attname for field in model._meta.concrete_fields)
    return names
