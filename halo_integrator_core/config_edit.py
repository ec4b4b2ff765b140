"""Changing the configuration file the way its author would: in place, comments kept.

Commands that write the file (`modules enable`, `csp map --auto`, `csp site-mappings
generate`) change only what they must: tables are appended after the file's own text, kept
byte for byte, and the result replaces the file atomically with the file's permissions, so a
crash leaves the old file or the new one, never half of either.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import tomlkit
from tomlkit.items import AoT, Table


class CannotAppend(ValueError):
    """The file's array of tables cannot take more tables; the message says why and what to do."""


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one step, keeping the file's mode (0600 when new)."""
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_tables(key: str, tables: Iterable[Table]) -> str:
    """``tables`` as ``[[key]]`` tables, rendered by tomlkit (quoting and all)."""
    document = tomlkit.document()
    array = tomlkit.aot()
    for table in tables:
        array.append(table)
    document.append(key, array)
    return tomlkit.dumps(document)


def append_tables(text: str, key: str, tables: Iterable[Table]) -> str:
    """``text`` (a config file) with ``tables`` appended as ``[[key]]`` tables.

    The file's text is kept byte for byte and the tables go after it: TOML lets an array of
    tables continue anywhere, while inserting into tomlkit's array would move tables written
    apart from each other and join the last one to the header after it.
    """
    tables = list(tables)
    if not tables:
        return text
    existing = tomlkit.parse(text).get(key)
    if existing is not None and not isinstance(existing, AoT):
        if isinstance(existing, list):
            written = "an inline array"
        elif isinstance(existing, dict):
            written = f"a single [{key}] table"
        else:
            written = "a plain value"
        raise CannotAppend(
            f"{key} is written as {written} in the file, which TOML does not let [[{key}]] "
            f"tables extend: rewrite it as [[{key}]] tables, then run the command again"
        )
    head = text
    if head and not head.endswith("\n"):
        head += "\n"
    if head.strip() and not head.endswith("\n\n"):
        head += "\n"
    combined = head + render_tables(key, tables)
    tomlkit.parse(combined)  # never hand back text tomlkit cannot read
    return combined
