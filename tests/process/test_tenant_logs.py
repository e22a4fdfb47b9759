"""The tenant logger (issue 12 items 7, 8, 9): company names with `%`, bounded arguments, and
control characters escaped by the text formatter. Through the real supervisor:
tests/mail/test_faults_mail_e2e.py."""
from __future__ import annotations

import io
import logging

import pytest

from supervisor.service.logsetup import TextFormatter
from tenant_proc.logs import MAX_ARG_CHARS, MAX_LINE_CHARS, tenant_logger


@pytest.fixture
def captured():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tenant")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield stream
    logger.removeHandler(handler)


def test_percent_in_the_company_name(captured, capsys):
    log = tenant_logger("100% Nöjd AB")
    log.info("processed uid %d %s in %.3fs", 5, "<m@x>", 0.25)
    log.info("no arguments, 100%% literal")
    log.warning("a handler's own bad call %d", "text")
    lines = captured.getvalue().splitlines()
    assert lines[0] == "INFO [100% Nöjd AB] processed uid 5 <m@x> in 0.250s"
    assert lines[1] == "INFO [100% Nöjd AB] no arguments, 100%% literal"
    assert lines[2].startswith("WARNING [100% Nöjd AB] a handler's own bad call %d")
    assert "Logging error" not in capsys.readouterr().err


def test_arguments_and_lines_are_bounded(captured):
    log = tenant_logger("Acme")
    log.info("processed uid %d %s", 1, "<" + "x" * 100_000 + ">")
    log.info("%s " * 50, *["y" * 1000] * 50)
    first, second = captured.getvalue().splitlines()
    assert len(first) < MAX_ARG_CHARS + 100
    assert len(second) < MAX_LINE_CHARS + 100


def test_control_characters_are_escaped(captured):
    log = tenant_logger("Evil\x1b[2J AB")
    log.info("subject %s", "red \x1b[31mtext\r\nINFO [Other AB] forged\u2028line")
    assert captured.getvalue().splitlines() == [
        "INFO [Evil\\x1b[2J AB] subject red \\x1b[31mtext\\x0d\\x0aINFO [Other AB] forged\\u2028line"]
