"""The README stays true: it opens with the two commands and documents every config key."""

import json
from pathlib import Path

from trainlib.config import reference

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    block = README.split("```")[1]
    assert "make run" in block and "make test" in block


def reference_rows() -> list[str]:
    """The README's config table, row by row, as the code defines it."""
    rows = []
    for key, default, description in reference():
        if isinstance(default, list | tuple):
            default = json.dumps(list(default))
        elif default is None or isinstance(default, bool):
            default = json.dumps(default)
        rows.append(f"| `{key}` | `{default}` | {description.replace('|', chr(92) + '|')} |")
    return rows


def test_readme_config_reference_matches_the_code():
    stale = [row for row in reference_rows() if row not in README]
    assert stale == [], "regenerate the table with tests/test_docs.py:reference_rows()"


def test_configs_named_in_the_readme_exist():
    import re

    root = Path(__file__).resolve().parents[1]
    named = set(re.findall(r"configs/[\w./-]+\.(?:yaml|csv)", README))
    assert named and all((root / path).exists() for path in named), named
