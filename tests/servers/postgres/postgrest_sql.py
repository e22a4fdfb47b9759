"""PostgREST request -> SQL, for the test server in postgrest_server.py. Test code, never shipped.

Covers what supabase-py sends for the calls this project makes (and a little more):
  GET    ?select=a,b&col=op.value&order=a.desc&limit=N&offset=N
  POST   insert / bulk insert, ?on_conflict=a,b with Prefer resolution=merge|ignore-duplicates
  PATCH  update with filters;  DELETE with filters;  POST /rpc/fn with named JSON arguments
Values only ever travel as query parameters; identifiers are quoted with psycopg.sql.Identifier
after checking they exist, like PostgREST's schema cache does.
Anything else raises ApiError PGRST100 so an unsupported call fails loudly instead of silently.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

FILTER_OPS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<=",
              "like": "LIKE", "ilike": "ILIKE"}
IS_VALUES = {"null": sql.SQL("NULL"), "true": sql.SQL("TRUE"), "false": sql.SQL("FALSE"),
             "unknown": sql.SQL("UNKNOWN")}
RESERVED_PARAMS = {"select", "order", "limit", "offset", "on_conflict", "columns"}


class ApiError(Exception):
    """An error PostgREST itself raises (not PostgreSQL): status plus its JSON body."""

    def __init__(self, status: int, code: str, message: str, details: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"code": code, "details": details, "hint": hint, "message": message}


def parse_error(message: str, details: str | None = None) -> ApiError:
    return ApiError(400, "PGRST100", message, details)


@dataclass
class Table:
    schema: str
    name: str
    columns: dict[str, str]  # name -> SQL type, e.g. "bigint", "text", "jsonb"

    @property
    def ident(self) -> sql.Composable:
        return sql.Identifier(self.schema, self.name)

    def column(self, name: str) -> sql.Identifier:
        if name not in self.columns:
            raise ApiError(400, "42703", f"column {self.name}.{name} does not exist")
        return sql.Identifier(name)


def load_table(conn: psycopg.Connection, schema: str, name: str) -> Table:
    rows = conn.execute(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND c.relkind IN ('r', 'v', 'm', 'p', 'f') "
        "AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
        (schema, name),
    ).fetchall()
    if not rows:
        raise ApiError(404, "PGRST205", f"Could not find the table '{schema}.{name}' in the schema cache",
                       hint=None)
    return Table(schema, name, {r[0]: r[1] for r in rows})


def split_list(text: str) -> list[str]:
    """Split `a,"b,c",d` on commas outside double quotes; backslash escapes inside quotes."""
    items: list[str] = []
    current: list[str] = []
    quoted = escaped = was_quoted = False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
            was_quoted = True
        elif char == "," and not quoted:
            items.append("".join(current) if was_quoted else "".join(current).strip())
            current, was_quoted = [], False
        else:
            current.append(char)
    if quoted:
        raise parse_error("unterminated quote in list", text)
    items.append("".join(current) if was_quoted else "".join(current).strip())
    return items


def _typed_param(table: Table, column: str) -> sql.Composable:
    """A parameter cast to the column's type, so '5' compares as a number on a bigint column."""
    return sql.SQL("CAST({} AS {})").format(sql.Placeholder(), sql.SQL(table.columns[column]))


def build_where(table: Table, filters: list[tuple[str, str]]) -> tuple[sql.Composable, list[Any]]:
    clauses: list[sql.Composable] = []
    params: list[Any] = []
    for column, expression in filters:
        if column in ("or", "and", "not.or", "not.and"):
            raise parse_error(f"logic operator {column!r} is not supported by the test server")
        ident = table.column(column)
        negate = expression.startswith("not.")
        if negate:
            expression = expression[4:]
        op, dot, value = expression.partition(".")
        if not dot:
            raise parse_error(f'"failed to parse filter ({expression})"', "unexpected end of input")
        if op in FILTER_OPS:
            clause = sql.SQL("{} {} {}").format(ident, sql.SQL(FILTER_OPS[op]), _typed_param(table, column))
            if op in ("like", "ilike"):
                value = value.replace("*", "%")  # PostgREST's URL-safe wildcard
            params.append(value)
        elif op == "in":
            if not (value.startswith("(") and value.endswith(")")):
                raise parse_error(f'"failed to parse filter (in.{value})"', "expected a parenthesised list")
            items = split_list(value[1:-1]) if value[1:-1] else []
            clause = sql.SQL("{} = ANY(CAST({} AS {}[]))").format(
                ident, sql.Placeholder(), sql.SQL(table.columns[column]))
            params.append(items)
        elif op == "is":
            if value.lower() not in IS_VALUES:
                raise parse_error(f'"failed to parse filter (is.{value})"', "expected null, true, false or unknown")
            clause = sql.SQL("{} IS {}").format(ident, IS_VALUES[value.lower()])
        else:
            raise parse_error(f'"failed to parse filter ({expression})"', f"unknown operator {op!r}")
        clauses.append(sql.SQL("NOT ({})").format(clause) if negate else clause)
    if not clauses:
        return sql.SQL(""), params
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses), params


def build_select_list(table: Table, select: str | None) -> sql.Composable:
    if not select or select == "*":
        return sql.SQL("*")
    parts: list[sql.Composable] = []
    for item in split_list(select):
        if item == "*":
            parts.append(sql.SQL("*"))
            continue
        if "(" in item or "!" in item:
            raise parse_error("embedded resources are not supported by the test server", item)
        alias, colon, rest = item.partition(":")
        if colon and not rest.startswith(":"):
            column = rest
        else:
            alias, column = "", item
        column, _, cast = column.partition("::")
        expr: sql.Composable = table.column(column)
        if cast:
            if not cast.isidentifier():
                raise parse_error(f"invalid cast {cast!r}")
            expr = sql.SQL("CAST({} AS {})").format(expr, sql.Identifier(cast))
        parts.append(sql.SQL("{} AS {}").format(expr, sql.Identifier(alias or column)))
    return sql.SQL(", ").join(parts)


def build_order(table: Table, order: str | None) -> sql.Composable:
    if not order:
        return sql.SQL("")
    terms: list[sql.Composable] = []
    for term in split_list(order):
        column, *mods = term.split(".")
        pieces = [table.column(column)]
        for mod in mods:
            keyword = {"asc": "ASC", "desc": "DESC", "nullsfirst": "NULLS FIRST",
                       "nullslast": "NULLS LAST"}.get(mod)
            if keyword is None:
                raise parse_error(f'"failed to parse order ({order})"', f"unexpected {mod!r}")
            pieces.append(sql.SQL(keyword))
        terms.append(sql.SQL(" ").join(pieces))
    return sql.SQL(" ORDER BY ") + sql.SQL(", ").join(terms)


def build_limit(limit: str | None, offset: str | None) -> sql.Composable:
    out = sql.SQL("")
    for keyword, value in (("LIMIT", limit), ("OFFSET", offset)):
        if value is None:
            continue
        if not value.isdigit():
            raise parse_error(f'"failed to parse {keyword.lower()} ({value})"')
        out += sql.SQL(f" {keyword} ") + sql.Literal(int(value))
    return out


def as_json_array(inner: sql.Composable) -> sql.Composable:
    """PostgREST builds its JSON in the database: same number and timestamp formats as here."""
    return sql.SQL("SELECT coalesce(json_agg(_r), '[]')::text FROM ({}) _r").format(inner)


def select_query(table: Table, query: dict[str, str], filters: list[tuple[str, str]]) -> tuple[sql.Composable, list[Any]]:
    where, params = build_where(table, filters)
    inner = sql.SQL("SELECT {} FROM {}{}{}{}").format(
        build_select_list(table, query.get("select")), table.ident, where,
        build_order(table, query.get("order")), build_limit(query.get("limit"), query.get("offset")))
    return as_json_array(inner), params


def insert_query(table: Table, query: dict[str, str], body: Any, resolution: str | None,
                 primary_key: list[str], returning: bool) -> tuple[sql.Composable, list[Any]]:
    rows = body if isinstance(body, list) else [body]
    if not rows or not all(isinstance(r, dict) for r in rows):
        raise ApiError(400, "PGRST102", "Empty or invalid json")
    if "columns" in query:
        names = split_list(query["columns"])
    else:
        names = list(dict.fromkeys(k for r in rows for k in r))
    for name in names:
        if name not in table.columns:
            raise ApiError(400, "PGRST204", f"Could not find the '{name}' column of '{table.name}' in the schema cache")
    cols = [sql.Identifier(n) for n in names]
    # json_populate_recordset turns JSON into the table's row type, keys missing from a row
    # becoming NULL: exactly how PostgREST inserts (unless Prefer: missing=default).
    stmt = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM json_populate_recordset(NULL::{}, %s::json)").format(
        table.ident, sql.SQL(", ").join(cols), sql.SQL(", ").join(cols), table.ident)
    if resolution:
        conflict = split_list(query["on_conflict"]) if query.get("on_conflict") else primary_key
        target = sql.SQL(", ").join(table.column(c) for c in conflict)
        if resolution == "ignore-duplicates":
            stmt += sql.SQL(" ON CONFLICT ({}) DO NOTHING").format(target)
        else:
            updates = sql.SQL(", ").join(sql.SQL("{0} = EXCLUDED.{0}").format(c) for c in cols)
            stmt += sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(target, updates)
    return _with_returning(table, stmt, query, returning), [json.dumps(rows)]


def update_query(table: Table, query: dict[str, str], body: Any, filters: list[tuple[str, str]],
                 returning: bool) -> tuple[sql.Composable, list[Any]]:
    if not isinstance(body, dict) or not body:
        raise ApiError(400, "PGRST102", "Empty or invalid json")
    for name in body:
        if name not in table.columns:
            raise ApiError(400, "PGRST204", f"Could not find the '{name}' column of '{table.name}' in the schema cache")
    cols = sql.SQL(", ").join(sql.Identifier(n) for n in body)
    where, params = build_where(table, filters)
    # A sub-select, not UPDATE ... FROM: the body row's columns would make the filters ambiguous.
    # The body goes first in the parameter list: it appears before the WHERE clause.
    stmt = sql.SQL("UPDATE {} SET ({}) = (SELECT {} FROM json_populate_record(NULL::{}, %s::json)){}").format(
        table.ident, cols, cols, table.ident, where)
    return _with_returning(table, stmt, query, returning), [json.dumps(body), *params]


def delete_query(table: Table, query: dict[str, str], filters: list[tuple[str, str]],
                 returning: bool) -> tuple[sql.Composable, list[Any]]:
    where, params = build_where(table, filters)
    stmt = sql.SQL("DELETE FROM {}{}").format(table.ident, where)
    return _with_returning(table, stmt, query, returning), params


def _with_returning(table: Table, stmt: sql.Composable, query: dict[str, str],
                    returning: bool) -> sql.Composable:
    stmt += sql.SQL(" RETURNING *")
    outer = sql.SQL("SELECT {} FROM _w").format(build_select_list(table, query.get("select")))
    if not returning:
        return sql.SQL("WITH _w AS ({}) SELECT count(*)::text FROM _w").format(stmt)
    return sql.SQL("WITH _w AS ({}) {}").format(stmt, as_json_array(outer))


def primary_key(conn: psycopg.Connection, table: Table) -> list[str]:
    rows = conn.execute(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
        (f'"{table.schema}"."{table.name}"',),
    ).fetchall()
    return [r[0] for r in rows]


def rpc_query(conn: psycopg.Connection, schema: str, name: str, args: dict[str, Any]) -> tuple[sql.Composable, list[Any]]:
    """Call a function with named arguments; a set-returning one answers a JSON array."""
    rows = conn.execute(
        "SELECT p.proretset, p.proargnames, "
        "array(SELECT format_type(t, NULL) FROM unnest(p.proargtypes) t) "
        "FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = %s AND p.proname = %s",
        (schema, name),
    ).fetchall()
    match = [r for r in rows if set(args) <= set(r[1] or [])]
    if not match:
        sig = ", ".join(sorted(args))
        raise ApiError(404, "PGRST202", f"Could not find the function {schema}.{name}({sig}) in the schema cache",
                       hint="Perhaps the function does not exist or the arguments do not match.")
    retset, argnames, argtypes = match[0]
    types = dict(zip(argnames or [], argtypes))
    call_args = sql.SQL(", ").join(
        sql.SQL("{} => CAST(%s AS {})").format(sql.Identifier(k), sql.SQL(types[k])) for k in args)
    # JSON values (objects, arrays) go in as JSON text; scalars as their text form.
    params = [rpc_param(v, types[k]) for k, v in args.items()]
    fn = sql.SQL("{}({})").format(sql.Identifier(schema, name), call_args)
    if retset:
        return as_json_array(sql.SQL("SELECT * FROM {}").format(fn)), params
    return sql.SQL("SELECT to_json({})::text").format(fn), params


def rpc_param(value: Any, sql_type: str) -> Any:
    """One named rpc argument as a query parameter (used by rpc_query).

    JSON objects and arrays go in as JSON text, scalars as their text form; a JSON array for
    an SQL array parameter (e.g. text[]) becomes a Python list, which psycopg sends as an
    array, as PostgREST does for `{"ids": ["a", "b"]}` and a `text[]` argument.
    """
    if isinstance(value, list) and sql_type.endswith("[]"):
        return [None if v is None else str(v) for v in value]
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return None if value is None else str(value)
