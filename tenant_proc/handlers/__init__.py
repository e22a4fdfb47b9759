"""Handlers: what each new email is handed to, called as handler(email, context).

The names users write in configs resolve here, `tenant_proc.handlers:<name>`, each imported on
first use from the module that defines it (PEP 562), so that a company using jsonl never loads
httpx or supabase-py:

    jsonl, log, null   basic.py
    command            command_runner.py  (a program per email)
    webhook            webhook_sender.py  (a signed POST per email)
    supabase_insert    supabase.py        (a row per email)

No module here bears a handler's name: importing a submodule sets it as an attribute of this
package, and `tenant_proc.handlers:webhook` would then find the module, not the handler.

Custom handlers use HandlerContext, and raise HandlerError (retried) or PermanentHandlerError
(failed at once) from here; loader.py turns `[handler] target` into the callable.
"""
from __future__ import annotations

import importlib
from typing import Any

_DEFINED_IN = {
    "jsonl": "basic",
    "log": "basic",
    "null": "basic",
    "command": "command_runner",
    "webhook": "webhook_sender",
    "supabase_insert": "supabase",
    "HandlerContext": "loader",
    "HandlerError": "loader",
    "PermanentHandlerError": "loader",
}

__all__ = sorted(_DEFINED_IN)


def __getattr__(name: str) -> Any:
    module = _DEFINED_IN.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # once looked up, an ordinary attribute
    return value
