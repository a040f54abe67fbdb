"""docs/configuration.md and etc/mailrelay.toml describe exactly the keys of mailrelay.config."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from mailrelay.config import SECTIONS, Config, parse_config, render_config

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "configuration.md"
SAMPLE = ROOT / "etc" / "mailrelay.toml"

#: A commented-out setting in the sample: "# key = value" (one space at most after the "#").
COMMENTED_SETTING = re.compile(r"^#\s?([A-Za-z_][A-Za-z0-9_]*\s*=.*)$")
SETTING = re.compile(r"^#?\s?([A-Za-z_][A-Za-z0-9_]*)\s*=")
HEADING = re.compile(r"^(#{1,6})\s+(.*)$")


def rendered_defaults() -> dict[tuple[str, str], str]:
    """{(section, key): default as TOML text}, from render_config(Config())."""
    result, section = {}, None
    for line in render_config(Config()).splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif line:
            key, _, value = line.partition(" = ")
            result[(section, key)] = value
    return result


def declared_keys(section: str) -> list[str]:
    return [f.name for f in dataclasses.fields(SECTIONS[section])]


def doc_tables() -> dict[str, dict[str, list[str]]]:
    """{section: {key: [cells of its table row]}} from the tables under "### `[section]`"."""
    tables: dict[str, dict[str, list[str]]] = {}
    current: str | None = None
    level = 0
    for line in DOCS.read_text().splitlines():
        heading = HEADING.match(line)
        if heading:
            name = re.fullmatch(r"`?\[(\w+)\]`?", heading.group(2).strip())
            if name:
                current, level = name.group(1), len(heading.group(1))
                tables.setdefault(current, {})
            elif current is not None and len(heading.group(1)) <= level:
                current = None
            continue
        if current is None or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        key = re.fullmatch(r"`(\w+)`", cells[0])
        if key:
            assert key.group(1) not in tables[current], f"[{current}] {key.group(1)} documented twice"
            tables[current][key.group(1)] = cells
    return tables


def sample_sections(text: str) -> dict[str, list[str]]:
    """{section: [keys set or commented out in it]} from the sample file."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        header = re.match(r"^\[(\w+)\]\s*$", line)
        if header:
            current = header.group(1)
            sections.setdefault(current, [])
            continue
        setting = SETTING.match(line)
        if setting and current is not None and (not line.startswith("#") or COMMENTED_SETTING.match(line)):
            sections[current].append(setting.group(1))
    return sections


def uncomment(text: str) -> str:
    return "\n".join(COMMENTED_SETTING.sub(r"\1", line) for line in text.splitlines()) + "\n"


def test_every_key_is_documented():
    tables = doc_tables()
    assert set(tables) == set(SECTIONS), "one table per section, headed ### `[section]`"
    for section in SECTIONS:
        assert list(tables[section]) == declared_keys(section), (
            f"docs/configuration.md: the [{section}] table must list exactly "
            f"{declared_keys(section)} in that order"
        )


@pytest.mark.parametrize("section,key", [(s, k) for s in SECTIONS for k in declared_keys(s)])
def test_documented_default_is_the_default(section, key):
    cells = doc_tables()[section][key]
    assert len(cells) == 4, f"[{section}] {key}: want | key | type | default | description |"
    default = cells[2].strip("`")
    expected = rendered_defaults()[(section, key)]
    assert re.sub(r"\s+", "", default) == re.sub(r"\s+", "", expected), (
        f"docs: [{section}] {key} default {default} != {expected}"
    )
    assert len(cells[3]) > 20, f"docs: [{section}] {key} needs a description"


def test_every_key_is_in_the_sample():
    sections = sample_sections(SAMPLE.read_text())
    assert list(sections) == list(SECTIONS)
    for section in SECTIONS:
        assert sections[section] == declared_keys(section), (
            f"etc/mailrelay.toml: [{section}] must have exactly {declared_keys(section)} in order"
        )


def test_sample_is_valid_as_shipped():
    config = parse_config(tomllib.loads(SAMPLE.read_text()), source=str(SAMPLE))
    assert render_config(config) == render_config(Config())


def test_sample_uncommented_is_valid_and_the_defaults():
    text = uncomment(SAMPLE.read_text())
    data = tomllib.loads(text)
    for section in SECTIONS:
        assert list(data[section]) == declared_keys(section)
    assert render_config(parse_config(data)) == render_config(Config())
