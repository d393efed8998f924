"""What the demo agents share: printing names safely, and writing a result or printing it."""

from __future__ import annotations

import errno
import os
import sys
from pathlib import Path


def shown(path: Path | str) -> str:
    """A file name safe to print: agents see names chosen by whoever made the files."""
    # Escape control characters and undecodable bytes (which Python holds as lone surrogates).
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(path))


class Agent:
    def __init__(self, name: str) -> None:
        self.name = name

    def say(self, text: str) -> None:
        print(f"{self.name}: {text}", flush=True)

    def report_skip(self, error: OSError) -> None:
        self.say(f"skipping {shown(Path(error.filename or '?'))}: {error.strerror}")

    def write_or_print(self, root: Path, output: str, text: str) -> None:
        partial = root / f".{output}.partial"
        try:
            # Write beside, then rename: a reader never sees half a file.
            partial.write_text(text, encoding="utf-8")
            os.replace(partial, root / output)
        except OSError as e:
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            self.say(
                f"the folder is read-only here ({e.strerror}), so {output} is printed instead:"
            )
            sys.stdout.write(text)
            return
        self.say(f"wrote {output}")
