"""Where the handler API lived before handlers got a folder: `tenant_proc.handler_loader`.

Handlers written against earlier READMEs import PermanentHandlerError (and HandlerContext,
HandlerError) from here; they keep working. New code imports them from tenant_proc.handlers.
"""
from __future__ import annotations

from tenant_proc.handlers.loader import HandlerContext, HandlerError, PermanentHandlerError

__all__ = ["HandlerContext", "HandlerError", "PermanentHandlerError"]
