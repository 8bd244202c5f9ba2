"""Run errors as users see them: without the server's file paths.

A worker's or the storage's error text often quotes a path on the server (an ``OSError``
names its file, a loader its model folder): the data dir, the Hugging Face cache, a home
directory. Users need the file's name, not where the server keeps it. ``store.move``, the
one writer of a run's error, passes every error through ``redact_error``.
"""

from __future__ import annotations

import re
from typing import Any

# An absolute path of two or more parts, not part of a URL or a relative path.
ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])(?:/[^\s/'\"`:,;()\[\]<>]+){2,}/?")


def without_server_paths(text: str) -> str:
    """``text`` with every absolute path replaced by its last part (a file or folder name)."""
    return ABSOLUTE_PATH.sub(lambda match: match.group(0).rstrip("/").rsplit("/", 1)[1], text)


def redact_error(error: dict[str, Any]) -> dict[str, Any]:
    """The error with its message and hint free of server paths (other fields as they are)."""
    return {
        key: without_server_paths(value)
        if key in ("message", "hint") and isinstance(value, str)
        else value
        for key, value in error.items()
    }
