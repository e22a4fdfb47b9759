"""The project keeps the layout README's Layout section draws (issue 20): no import circle, every
import pointing down, vocabulary modules importing only vocabulary, no module over 400 lines, no
folder over 12 modules. Read with `ast` (tests/architecture/layout_rules.py); each rule is also
shown to fail on a copy of the tree with one thing added that breaks it."""
from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest

from tests.architecture import layout_rules
from tests.architecture.layout_rules import MAX_LINES, MAX_MODULES, violations

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_the_project_keeps_its_layout():
    assert violations(REPO_ROOT) == []


def test_every_module_of_the_packages_has_a_room():
    modules = layout_rules.module_files(REPO_ROOT)
    assert len(modules) > 80  # the packages were found and read
    for name in modules:
        layout_rules.room_of(name)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the three packages, which a test then breaks in one place."""
    for package in layout_rules.PACKAGES:
        shutil.copytree(REPO_ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    assert violations(tmp_path) == []
    return tmp_path


def _append(path: Path, code: str) -> None:
    path.write_text(path.read_text() + "\n\n" + textwrap.dedent(code))


def test_a_circle_is_named_even_through_an_import_inside_a_function(tree):
    # connect.py imports dial.py; dial.py importing connect.py, late, closes a circle.
    _append(tree / "tenant_proc/imap/dial.py", """
        def _late():
            from tenant_proc.imap import connect
            return connect
    """)
    found = violations(tree)
    assert any(v.startswith("import circle between tenant_proc.imap.connect, tenant_proc.imap.dial")
               for v in found), found


def test_an_upward_import_is_named_with_both_rooms(tree):
    _append(tree / "tenant_proc/imap/fetching.py", """
        def _late():
            from tenant_proc.mail.mailbox import Mailbox
            return Mailbox
    """)
    found = violations(tree)
    assert any("upward import tenant_proc.imap.fetching -> tenant_proc.mail.mailbox" in v
               and "tenant_proc/imap/fetching.py:" in v for v in found), found


def test_a_company_process_importing_the_supervisor_is_upward(tree):
    _append(tree / "tenant_proc/session/loop.py", "from supervisor.errors import ConfigError\n")
    found = violations(tree)
    assert any("upward import tenant_proc.session.loop -> supervisor.errors" in v for v in found), found


def test_rooms_on_one_floor_do_not_import_each_other(tree):
    _append(tree / "tenant_proc/handlers/loader.py", "from tenant_proc.store import api\n")
    found = violations(tree)
    assert any("upward import tenant_proc.handlers.loader -> tenant_proc.store.api" in v
               for v in found), found


def test_a_vocabulary_module_importing_more_than_vocabulary_is_named(tree):
    _append(tree / "supervisor/config/settings.py", "from supervisor.config import env\n")
    found = violations(tree)
    assert any("vocabulary module supervisor.config.settings imports supervisor.config.env" in v
               for v in found), found


def test_imports_for_type_checking_only_do_not_count(tree):
    _append(tree / "tenant_proc/imap/fetching.py", """
        from typing import TYPE_CHECKING

        if TYPE_CHECKING:
            from tenant_proc.mail.mailbox import Mailbox
    """)
    assert violations(tree) == []


def test_a_new_module_beside_a_package_face_must_be_placed(tree):
    (tree / "tenant_proc/helpers.py").write_text("X = 1\n")
    found = violations(tree)
    assert any("module tenant_proc.helpers has no room in FLOORS" in v for v in found), found


def test_a_module_of_401_lines_is_named(tree):
    (tree / "tenant_proc/imap/long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    found = violations(tree)
    assert found == [f"tenant_proc/imap/long.py has {MAX_LINES + 1} lines (at most {MAX_LINES}): "
                     "move a whole concern out"], found
    (tree / "tenant_proc/imap/long.py").write_text("x = 1\n" * MAX_LINES)
    assert violations(tree) == []


def test_a_thirteenth_module_in_a_folder_is_named(tree):
    folder = tree / "tenant_proc/imap"
    count = len(list(folder.glob("*.py")))
    for i in range(MAX_MODULES - count):
        (folder / f"extra_{i}.py").write_text("")
    assert violations(tree) == []
    (folder / "one_too_many.py").write_text("")
    found = violations(tree)
    assert found == [f"tenant_proc/imap/ holds {MAX_MODULES + 1} modules (at most {MAX_MODULES}): "
                     "give a concern a folder of its own"], found
