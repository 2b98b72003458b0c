"""The README stays true: it opens with the two commands and documents every config key."""

from pathlib import Path

from trainlib.config import reference

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_readme_opens_with_the_two_commands():
    block = README.split("```")[1]
    assert "make run" in block and "make test" in block


def test_readme_documents_every_config_key():
    missing = [key for key, _, _ in reference() if f"`{key}`" not in README]
    assert missing == []


def test_configs_named_in_the_readme_exist():
    import re

    root = Path(__file__).resolve().parents[1]
    named = set(re.findall(r"configs/[\w./-]+\.(?:yaml|csv)", README))
    assert named and all((root / path).exists() for path in named), named
