"""Documentation that cannot drift silently: every setting is documented, README commands exist."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_in_the_readme():
    from service.settings import Settings

    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", readme, flags=re.M))
    fields = {name.upper() for name in Settings.model_fields}
    assert fields == documented, (fields - documented, documented - fields)


def test_readme_two_commands_are_make_targets_and_ci_runs_the_test_command():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in readme
        assert re.search(rf"^{target}:", makefile, flags=re.M)
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_docs_linked_from_the_readme_exist():
    readme = (ROOT / "README.md").read_text()
    for link in re.findall(r"\]\((docs/[^)#]+)\)", readme):
        assert (ROOT / link).is_file(), link


# ---------------------------------------------------------------------- benchmark numbers and commands

# docs/BENCHMARKS.md gives its commands per section, often after the tables: not checked here yet.
BENCH_DOCS = ["docs/BENCHMARKS-serving.md"]
_COMMAND = re.compile(r"`(make [a-z][\w-]*|python -m [\w.]+|python (?:benchmarks|scripts)/[\w/]+\.py)[^`]*`")
_NUMBER = re.compile(r"\d+\.\d+|\b\d{2,}\b")


def _commands(text: str) -> list[str]:
    return [m.group(1) for m in _COMMAND.finditer(text)]


def _tables_with_context(text: str) -> list[tuple[int, str, str]]:
    """(line number, first row, the text from the nearest heading or table above down to the table)."""
    lines = text.splitlines()
    out, heading, i = [], 0, 0
    while i < len(lines):
        if lines[i].startswith("#"):
            heading = i
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[-| :]+\|$", lines[i + 1]):
            start = i
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            if _NUMBER.search("\n".join(lines[start + 2 : i])):
                out.append((start + 1, lines[start], "\n".join(lines[heading:i])))
            heading = i  # the next table needs its own command
            continue
        i += 1
    return out


def test_every_table_of_benchmark_numbers_names_the_command_that_produced_it():
    """A table of numbers in the benchmark docs needs a command between its heading and itself."""
    missing = []
    for doc in BENCH_DOCS:
        for line, header, context in _tables_with_context((ROOT / doc).read_text()):
            if not _commands(context):
                missing.append(f"{doc}:{line}: {header[:80]}")
    assert not missing, "tables without a command:\n" + "\n".join(missing)


def test_every_command_named_in_the_benchmark_docs_exists():
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    stale = []
    for doc in [*BENCH_DOCS, "docs/DEPLOY.md", "docs/MODEL.md", "docs/TESTING.md"]:
        for command in _commands((ROOT / doc).read_text()):
            if command.startswith("make "):
                ok = command.split()[1] in targets
            elif command.startswith("python -m "):
                module = command.split()[2].replace(".", "/")
                ok = (ROOT / f"{module}.py").is_file() or (ROOT / module / "__main__.py").is_file()
            else:
                ok = (ROOT / command.split()[1]).is_file()
            if not ok:
                stale.append(f"{doc}: {command}")
    assert not stale, "commands that do not exist in this repository:\n" + "\n".join(stale)


def test_the_table_check_fails_on_a_table_without_a_command():
    doc = "## Speed\n\nMeasured by hand.\n\n| run | ms |\n|---|---|\n| a | 12.5 |\n"
    assert _tables_with_context(doc) and not _commands(_tables_with_context(doc)[0][2])
    with_command = "## Speed\n\n`make bench-train` gave:\n\n| run | ms |\n|---|---|\n| a | 12.5 |\n"
    assert _commands(_tables_with_context(with_command)[0][2]) == ["make bench-train"]
