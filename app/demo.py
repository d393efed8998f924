"""The demo's folder of notes (the same four `packaging/setup demo` writes), for the
desktop app's first-run window to offer the demo agent something to work on."""

from __future__ import annotations

from pathlib import Path

DEMO_PROFILE = "notes-organizer"

NOTES = {
    "groceries.md": """# Groceries for the weekend

- [ ] oat milk
- [ ] two lemons, basil and a block of parmesan #cooking
- [x] coffee beans
- [ ] birthday candles for Sam #family

TODO: check whether the market is open on Sunday.
""",
    "project-kickoff.md": """# Project kickoff: garden shed

We agreed to start in April once the ground is dry. Budget is 1,800 EUR
including the foundation. #home #planning

- [ ] ask two carpenters for quotes
- [ ] measure the corner behind the apple tree
- [ ] find out whether the council needs to approve it

Decision: wood, not metal; it has to match the fence.
""",
    "reading-list.md": """# Reading list

1. *The Mythical Man-Month* (again) #work
2. *Braiding Sweetgrass*
3. The Rust book, chapters 15 to 17 #learning

TODO: return the library copy of *Piranesi* by the 14th.
""",
    "meeting-2024-05-02.md": """# Team sync, 2 May

Present: Ana, Bo, Chidi. #work

- Release slips one week: the installer still fails on Fedora.
- Bo takes over on-call from Monday.

- [ ] Ana: write down the rollback steps
- [ ] me: book the room for the retro #planning
""",
}


def demo_folder(home: Path) -> Path:
    return home / "AirlockDemo" / "notes"


def write_demo_notes(folder: Path) -> bool:
    """Writes the demo notes into `folder` unless it exists (then it is the user's and left
    as it is). Returns whether it wrote them."""
    if folder.exists():
        return False
    folder.mkdir(parents=True)
    for name, text in NOTES.items():
        (folder / name).write_text(text, encoding="utf-8")
    return True
