"""The jsonl handler never follows a link planted at its path (a shared directory, /tmp): the
email's line would be appended to the link's target (a shell's rc file, say). Before: it was."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tenant_proc.handlers import jsonl
from tenant_proc.handlers.loader import HandlerContext
from tenant_proc.message import Email


def test_jsonl_refuses_a_link_at_its_path(tmp_path: Path) -> None:
    target = tmp_path / "victim.rc"
    target.write_text("precious\n")
    link = tmp_path / "emails.jsonl"
    link.symlink_to(target)
    email = Email(tenant_id="acme", folder="INBOX", uid=5, uidvalidity=9, message_id="<m@x>",
                  subject="$(touch /tmp/pwned)", from_="a@example.com", to=[], raw=b"", size=0,
                  received_at=100.0, detected_at=101.0)
    context = HandlerContext(options={"path": str(link)}, logger=logging.getLogger("t"), tenant={},
                             base_dir=str(tmp_path))
    with pytest.raises(OSError, match="is a symbolic link: the jsonl handler does not follow it"):
        jsonl(email, context)
    assert target.read_text() == "precious\n"
    # A link to the directory is fine: only the file itself must not be one.
    (tmp_path / "real").mkdir()
    (tmp_path / "dir-link").symlink_to(tmp_path / "real")
    jsonl(email, HandlerContext(options={"path": str(tmp_path / "dir-link" / "emails.jsonl")},
                                logger=logging.getLogger("t"), tenant={}, base_dir=str(tmp_path)))
    assert (tmp_path / "real" / "emails.jsonl").read_text().count("\n") == 1


@pytest.mark.parametrize("planted", [".index", ".index-wal"])
def test_jsonl_refuses_a_link_at_its_index(tmp_path: Path, planted: str) -> None:
    """The index beside the file (jsonl_index.py) is a SQLite file, which SQLite would open
    through a link: it is opened as the state store's database is (private_files)."""
    from tenant_proc.private_files import UnsafePath

    target = tmp_path / "victim.rc"
    target.write_text("precious\n")
    path = tmp_path / f"links-{planted.strip('.')}" / "emails.jsonl"
    path.parent.mkdir()
    (path.parent / f"emails.jsonl{planted}").symlink_to(target)
    email = Email(tenant_id="acme", folder="INBOX", uid=5, uidvalidity=9, message_id="<m@x>",
                  subject="s", from_="a@example.com", to=[], raw=b"", size=0,
                  received_at=100.0, detected_at=101.0)
    context = HandlerContext(options={"path": str(path)}, logger=logging.getLogger("t"), tenant={},
                             base_dir=str(tmp_path))
    with pytest.raises(UnsafePath, match="is a symbolic link: refusing to follow it"):
        jsonl(email, context)
    assert target.read_text() == "precious\n"
    assert path.read_bytes() == b""  # nothing written before the index could record where
