"""The error table of docs/api.md and ERROR_CODES say the same: every code, with the same status, both ways."""

from __future__ import annotations

import re
from pathlib import Path

from app.errors import ERROR_CODES

API_DOC = Path(__file__).resolve().parent.parent / "docs" / "api.md"
ROW = re.compile(r"^\| (\d{3}) \| `([a-z_]+)` \| .+ \|$")


def doc_error_table() -> dict[str, int]:
    """code -> status from the ``| status | code | when |`` table under ``### Errors``."""
    section = API_DOC.read_text(encoding="utf-8").split("\n### Errors\n", 1)[1].split("\n## ", 1)[0]
    rows = [ROW.match(line) for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    table = {match[2]: int(match[1]) for match in rows if match}
    assert len(table) == len(rows) - 1, "a row of docs/api.md's error table is not '| status | `code` | when |'"
    return table


def test_every_code_in_the_documented_table_is_an_error_code_with_that_status():
    wrong = {code: status for code, status in doc_error_table().items() if ERROR_CODES.get(code, (0,))[0] != status}
    assert not wrong, f"docs/api.md rows whose code is missing from ERROR_CODES or has another status: {wrong}"


def test_every_error_code_is_in_the_documented_table():
    missing = sorted(set(ERROR_CODES) - set(doc_error_table()))
    assert not missing, f"ERROR_CODES not in docs/api.md's error table: {missing}"
