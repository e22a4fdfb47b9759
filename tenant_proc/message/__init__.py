"""The parsed email a handler gets, and the parser that never raises on hostile input.

`tenant_proc.message.Email` is what handlers written against the README import; the parts
live in the modules beside this one.
"""
from __future__ import annotations

from tenant_proc.message.model import Email, Envelope, answering_fields
from tenant_proc.message.parse import parse_email

__all__ = ["Email", "Envelope", "answering_fields", "parse_email"]
