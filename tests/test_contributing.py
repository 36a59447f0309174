"""CONTRIBUTING.md's cache recipes run exactly as written: every code block of their sections that names its file in
its first line is written to that file, the worked example's script runs in a fresh interpreter (its registration
never reaches this process's registries) and prints what the guide shows."""

import re
import subprocess
import sys
from pathlib import Path

from streamgen.cache import load_preset

GUIDE = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"
SECTIONS = ("## Add a cache preset", "## Add a position policy / switch strategy / memory")
BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.S)
NAMED = re.compile(r"# ([\w.-]+\.(?:py|yaml))\n")


def blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced block of the cache recipes' sections, in order."""
    sections = re.split(r"^(?=## )", GUIDE.read_text(), flags=re.M)
    return [block for section in sections if section.startswith(SECTIONS) for block in BLOCK.findall(section)]


def write_named_blocks(folder: Path) -> list[str]:
    """Write every block whose first line is ``# <file>`` to ``folder/<file>``; their names, in order."""
    names = []
    for _, text in blocks():
        named = NAMED.match(text)
        if named:
            (folder / named.group(1)).write_text(text)
            names.append(named.group(1))
    return names


def test_the_guide_names_one_file_per_recipe_block(tmp_path):
    assert write_named_blocks(tmp_path) == ["wide-rolling.yaml", "keep_last.py", "keep-last.yaml", "try_keep_last.py"]


def test_the_preset_recipe_loads_as_the_preset_it_changes(tmp_path):
    write_named_blocks(tmp_path)
    wide, rolling = load_preset(str(tmp_path / "wide-rolling.yaml")), load_preset("rolling")
    assert [(r.name, r.frames) for r in wide.regions] == [("sink", 3), ("window", 15)]
    assert (wide.positions, wide.switch, wide.memory) == (rolling.positions, rolling.switch, rolling.memory)


def test_the_worked_switch_strategy_runs_and_prints_what_the_guide_shows(tmp_path):
    write_named_blocks(tmp_path)
    result = subprocess.run([sys.executable, "try_keep_last.py"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (shown,) = [text for language, text in blocks() if language == "text"]
    assert result.stdout == shown


def test_the_worked_strategy_checks_its_option_at_load_naming_the_file(tmp_path):
    write_named_blocks(tmp_path)
    preset = tmp_path / "keep-last.yaml"
    preset.write_text(preset.read_text().replace("{frames: 3}", "{frames: 13}"))
    code = f"import keep_last; from streamgen.cache import load_preset; load_preset({str(preset)!r})"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    last = result.stderr.strip().splitlines()[-1]
    assert str(preset) in last and "switch 'keep-last': frames must be in 1..12, got 13" in last
