"""The per-tenant logger: every line names the company, so one shared log stays readable."""
from __future__ import annotations

import logging
from typing import Any, MutableMapping

LOGGER_NAME = "tenant"


class TenantAdapter(logging.LoggerAdapter):
    """Prefixes every message with "[Company Name] "; the parent owns handlers and format."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return f"[{self.extra['tenant_name']}] {msg}", kwargs


def tenant_logger(name: str) -> logging.LoggerAdapter:
    return TenantAdapter(logging.getLogger(LOGGER_NAME), {"tenant_name": name})
