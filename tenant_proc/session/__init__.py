"""The company's IMAP session: loop.py (connect, log in, select, catch up, poll; reconnect with
backoff), idle.py (waiting in IDLE, leaving it, reading what came meanwhile) and timing.py
(reconnect delays, poll phases)."""
