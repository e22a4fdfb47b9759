"""Turn `[handler] target = "module:callable"` into something the mailbox loop can call."""
from __future__ import annotations

import importlib
import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from tenant_proc.message import Email
from tenant_proc.spec import TenantSpec


class HandlerError(Exception):
    """The handler target cannot be used; the message is one line fit for the user."""


class PermanentHandlerError(Exception):
    """Raised by a handler when retrying cannot help (e.g. a webhook answered 400): the mailbox
    records the email as failed at once instead of after max_attempts."""


@dataclass(frozen=True)
class HandlerContext:
    options: dict[str, Any]
    logger: logging.LoggerAdapter | logging.Logger
    tenant: dict[str, Any]  # spec.public_info(): no secrets
    base_dir: str = "."
    extra: dict[str, Any] = field(default_factory=dict)  # room for handlers' own per-process state
    # Call it while waiting on something slow (a retry pause, a long command): it sends the
    # supervisor a heartbeat when one is due, so slow but healthy work is not killed as hung.
    keepalive: Callable[[], None] = field(default=lambda: None)
    # The tenant's heartbeat counters (plain ints): a handler may add its own (webhook_*).
    counters: dict[str, int] = field(default_factory=dict)
    # Call it with the pgid of a process group the handler started (None when it is gone): the
    # supervisor kills that group if the tenant dies first (the `command` handler uses it).
    track_process_group: Callable[[int | None], None] = field(default=lambda pgid: None)
    # The longest one blocking request (no keepalive possible inside it) may take, in seconds,
    # as a whole: the request bound, derived from heartbeat_timeout (TenantSpec.request_bound,
    # supervisor/config/timeouts.py). The webhook cuts each attempt to it.
    request_timeout: float = 10.0


def resolve_target(target: str) -> Any:
    """Import "module:callable" and return the object (the supervisor also calls this to fail fast)."""
    module_name, sep, attr_path = target.partition(":")
    if not sep or not module_name or not attr_path:
        raise HandlerError(f"handler {target!r} is not of the form 'module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise HandlerError(f"handler {target!r} not found: cannot import {module_name}: {exc}") from None
    except Exception as exc:  # a module that raises on import is the user's bug, reported in one line
        raise HandlerError(
            f"handler {target!r} failed to import: {type(exc).__name__}: {exc}"
        ) from None
    obj: Any = module
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise HandlerError(f"handler {target!r} not found: module {module_name} has no attribute {attr_path}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise HandlerError(f"handler {target!r} is not callable")
    return obj


class LoadedHandler:
    """The handler as the loop sees it: call(email) and close()."""

    def __init__(
        self,
        func: Callable[[Email, HandlerContext], Any],
        context: HandlerContext,
        instance: object | None = None,
    ) -> None:
        self._func = func
        self.context = context
        self._instance = instance  # set when the target was a class: it may own resources

    def __call__(self, email: Email) -> None:
        counters = self.context.counters
        started = time.monotonic()
        try:
            self._func(email, self.context)
        finally:  # handler latency for status/metrics: calls and total milliseconds
            counters["handler_calls"] = counters.get("handler_calls", 0) + 1
            counters["handler_ms"] = (counters.get("handler_ms", 0)
                                      + int((time.monotonic() - started) * 1000))

    def close(self) -> None:
        close = getattr(self._instance, "close", None)
        if callable(close):
            close()


def load_handler(
    spec: TenantSpec, logger: logging.LoggerAdapter, keepalive: Callable[[], None] | None = None,
    counters: dict[str, int] | None = None,
    track_process_group: Callable[[int | None], None] | None = None,
) -> LoadedHandler:
    """Resolve the target; a class is instantiated once per process with the options."""
    target = resolve_target(spec.handler.target)
    options = spec.handler.options_dict()
    if spec.webhook_url:  # a tenant's own endpoint (column webhook_url) wins over [handler] url
        options["url"] = spec.webhook_url
    context = HandlerContext(
        options=options, logger=logger, tenant=spec.public_info(), base_dir=spec.base_dir,
        keepalive=keepalive or (lambda: None), counters={} if counters is None else counters,
        track_process_group=track_process_group or (lambda pgid: None),
        request_timeout=spec.request_bound,
    )
    if not inspect.isclass(target):
        return LoadedHandler(target, context)
    try:
        instance = target(options)
    except Exception as exc:
        raise HandlerError(
            f"handler {spec.handler.target!r} could not be created: {type(exc).__name__}: {exc}"
        ) from None
    if not callable(instance):
        raise HandlerError(f"handler {spec.handler.target!r} instances are not callable")
    return LoadedHandler(instance, context, instance)
