"""Handler `tenant_proc.handlers:supabase_insert`: one row per email in a Supabase table.

    [handler]
    target = "tenant_proc.handlers:supabase_insert"
    table = "emails"                          # default; sql/001_init.sql creates it

Upserts on (tenant_id, folder, uidvalidity, uid), so an email handed over again after a crash
updates its row instead of adding a second one. The answering fields (reply_to, in_reply_to,
references, list_id, auto, from_self) are columns since sql/008_answering.sql; a table without
them still gets its rows, without those columns, and one warning says which migration to run.
URL and key come from SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY (names changeable with
url_env / key_env), never from the config file. The client is made on first use, inside the
tenant process.
"""
from __future__ import annotations

import os
from typing import Any

from tenant_proc.handlers.loader import HandlerContext
from tenant_proc.message import Email

try:
    # Imported with this module, which the supervisor resolves before it forks: every tenant
    # then shares supabase-py's pages instead of importing its own copy (several MB each).
    import tenant_proc.http_clients.supabase  # noqa: F401
except ImportError:  # not installed: SupabaseInsert reports it at load, as one clear line
    pass

CONFLICT_KEY = "tenant_id,folder,uidvalidity,uid"
ANSWERING_COLUMNS = ("reply_to", "in_reply_to", "references", "list_id", "auto", "from_self")
# PostgREST's "Could not find the 'x' column of 't' in the schema cache"; PostgreSQL's own.
MISSING_COLUMN_CODES = frozenset({"PGRST204", "42703"})


class SupabaseInsert:
    def __init__(self, options: dict[str, Any]) -> None:
        self.table = str(options.get("table") or "emails")
        url_env = str(options.get("url_env") or "SUPABASE_URL")
        key_env = str(options.get("key_env") or "SUPABASE_SERVICE_ROLE_KEY")
        self._url = os.environ.get(url_env, "").strip()
        self._key = os.environ.get(key_env, "").strip()
        if not self._url or not self._key:
            # Raised at load: the tenant reports one clear line instead of failing every email.
            raise ValueError(f"supabase_insert needs {url_env} and {key_env} in the environment")
        try:  # fail at load with one clear line, not at every email, if the extra is missing
            import tenant_proc.http_clients.supabase  # noqa: F401
        except ImportError:
            raise ValueError(
                "supabase_insert needs the supabase package: pip install 'supabase>=2.34,<3'"
            ) from None
        self._client: Any = None
        self._answering_columns = True  # False once the table turned out not to have them

    def __repr__(self) -> str:
        return f"SupabaseInsert(table={self.table!r}, url={self._url!r})"

    def __call__(self, email: Email, context: HandlerContext) -> None:
        from tenant_proc.http_clients.supabase import describe_error, make_client

        try:
            if self._client is None:
                # One bound for the whole request (not per socket read), at most 10 s and
                # less when heartbeat_timeout is lowered: the tenant cannot beat inside the
                # request, so a slow Supabase must be a retry, not a "hung" kill.
                bound = min(10.0, context.request_timeout)
                self._client = make_client(self._url, self._key, timeout=bound, total_timeout=bound)
            row = email_row(email)
            try:
                self._upsert(row if self._answering_columns else _without_answering(row))
            except Exception as exc:
                if not self._answering_columns or getattr(exc, "code", None) not in MISSING_COLUMN_CODES:
                    raise
                self._answering_columns = False
                context.logger.warning(
                    "supabase_insert: %s has no column for the answering fields (%s); run "
                    "sql/008_answering.sql. Rows go in without them meanwhile", self.table,
                    describe_error(exc, self._key))
                self._upsert(_without_answering(row))
        except Exception as exc:
            # The mailbox loop retries the email later; the message must not carry the key.
            raise RuntimeError(f"supabase_insert into {self.table}: {describe_error(exc, self._key)}") from None

    def _upsert(self, row: dict[str, Any]) -> None:
        (self._client.table(self.table)
         .upsert(row, on_conflict=CONFLICT_KEY, returning="minimal").execute())

    def close(self) -> None:
        if self._client is not None:
            from tenant_proc.http_clients.supabase import close_client

            close_client(self._client)
            self._client = None


def email_row(email: Email) -> dict[str, Any]:
    """The row for one email. PostgreSQL text cannot hold NUL characters: they are dropped."""
    return {
        "tenant_id": email.tenant_id,
        "folder": email.folder,
        "uidvalidity": email.uidvalidity,
        "uid": email.uid,
        "message_id": _text(email.message_id),
        "from": _text(email.from_),
        "to": [_text(a) for a in email.to],
        "subject": _text(email.subject),
        "date": email.date.isoformat() if email.date else None,
        "text": _text(email.text),
        "html": _text(email.html),
        "attachments": [
            {"name": _text(a.get("name")), "content_type": _text(a.get("content_type")),
             "size": a.get("size")}
            for a in email.attachments
        ],
        # sql/008_answering.sql
        "reply_to": [_text(a) for a in email.reply_to],
        "in_reply_to": _text(email.in_reply_to),
        "references": [_text(r) for r in email.references],
        "list_id": _text(email.list_id),
        "auto": email.auto,
        "from_self": email.from_self,
    }


def _without_answering(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ANSWERING_COLUMNS}


def _text(value: str | None) -> str | None:
    return value.replace("\x00", "") if isinstance(value, str) else value


# The name the config uses: `tenant_proc.handlers:supabase_insert` (re-exported lazily there).
supabase_insert = SupabaseInsert
