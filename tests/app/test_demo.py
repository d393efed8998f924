"""The demo's sample notes (app/demo.py): written into a new folder once; a folder that is
already there is the user's and left as it is."""

from __future__ import annotations

from pathlib import Path

from app.demo import NOTES, demo_folder, write_demo_notes


def test_the_demo_notes_are_written_once_and_a_users_folder_is_left_alone(
    tmp_path: Path,
) -> None:
    folder = demo_folder(tmp_path)
    assert folder == tmp_path / "AirlockDemo" / "notes"
    assert write_demo_notes(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(NOTES)
    (folder / "groceries.md").write_text("mine\n")
    assert not write_demo_notes(folder)
    assert (folder / "groceries.md").read_text() == "mine\n"
