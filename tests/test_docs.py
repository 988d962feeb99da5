"""Documentation that cannot drift silently: every setting is documented, README commands exist."""

from __future__ import annotations

import re
from importlib.util import find_spec
from pathlib import Path
from typing import NamedTuple

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

# Docs whose measured numbers must each come with the command that produced them (docs/TESTING.md,
# "Docs numbers", states the rule). DEPLOY.md's other numbers are settings, defaults and arithmetic:
# a paragraph there that says so (a backticked setting or file, "default", "exact", "estimate") is
# not a measurement.
BENCH_DOCS = ["docs/BENCHMARKS-serving.md", "docs/BENCHMARKS.md"]
NUMBER_DOCS = [*BENCH_DOCS, "docs/DEPLOY.md"]
NOT_MEASURED_MARKS = re.compile(
    r"`[A-Z][A-Z0-9_]{2,}`|`[\w./-]+\.(?:conf|yaml|yml|toml|sh)`|default|exact|estimate"
)
_COMMAND = re.compile(r"`(make [a-z][\w-]*|python -m [\w.]+|python (?:benchmarks|scripts)/[\w/]+\.py)[^`]*`")
# a command line in a fenced block: env assignments, nice, /usr/bin/time [-v] and a venv path allowed
_FENCED_COMMAND = re.compile(
    r"^\s*(?:[A-Z_]+=\S+\s+)*(?:nice -n \d+\s+)?(?:/usr/bin/time(?: -v)?\s+)?(?:\S*/)?"
    r"(make [a-z][\w-]*|python3? -m [\w.]+|python3? (?:benchmarks|scripts)/[\w/]+\.py)",
    re.M,
)
_NUMBER = re.compile(r"\d+\.\d+|\b\d{2,}\b")
# A measured number: a time, size, rate, percentage or speed-up with its unit, or a metric value
# (0.ddd). A target (after <= or >=) is not a measurement.
_UNIT = r"(?:ns|µs|us|ms|s|min|h|B|kB|KB|KiB|MB|MiB|GB|GiB|%|req/s|rps)"
_MEASURED = re.compile(
    rf"(?<![\w.=/+])\d[\d,]*(?:\.\d+)?(?:\s?{_UNIT}(?![\w/])|[x×](?!\w))|(?<![\w.=/])0\.\d{{3,}}(?!\w)"
)
_TARGET = re.compile(rf"[≤≥<>]=?\s*\d[\d,.]*\s?(?:{_UNIT}|[x×])?")


def _commands(text: str, fenced: bool = False) -> list[str]:
    found = [m.group(1) for m in _COMMAND.finditer(text)]
    return found + [m.group(1) for m in _FENCED_COMMAND.finditer(text)] if fenced else found


def _measured(text: str) -> list[str]:
    return _MEASURED.findall(_TARGET.sub(" ", text))


class Block(NamedTuple):
    kind: str  # "heading", "code", "table" or "para" (a paragraph or list)
    line: int  # 1-based line of its first line
    text: str
    section: int  # index of the block of its heading (0 before the first heading)


def _blocks(text: str) -> list[Block]:
    """The document as headings, fenced code blocks, tables and paragraphs (a `#` in a code block is
    a shell comment, not a heading)."""
    lines = text.splitlines()
    out: list[Block] = []
    i, section = 0, 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            out.append(Block("code", i + 1, "\n".join(lines[i + 1 : j]), section))
            i = j + 1
        elif line.startswith("#"):
            section = len(out)
            out.append(Block("heading", i + 1, line, section))
            i += 1
        elif not line.strip():
            i += 1
        else:
            table = line.startswith("|")
            j = i
            while (
                j < len(lines)
                and lines[j].strip()
                and not lines[j].startswith(("```", "#"))
                and lines[j].startswith("|") == table
            ):
                j += 1
            out.append(Block("table" if table else "para", i + 1, "\n".join(lines[i:j]), section))
            i = j
    return out


def _block_commands(block: Block) -> list[str]:
    return _commands(block.text, fenced=block.kind == "code")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    title = heading.lstrip("#").strip().lower()
    return re.sub(r"[^\w\- ]", "", title).replace(" ", "-")


def _numbers_without_a_command(text: str, not_measured_marks: re.Pattern[str] | None = None) -> list[str]:
    """Tables (row by row) and paragraphs with a measured number and no command in their section
    before them or in themselves, nor a link (``](#anchor)``) to a section of this document that
    has one."""
    blocks = _blocks(text)
    sections: dict[str, bool] = {}
    for k, block in enumerate(blocks):
        if block.kind == "heading":
            end = next((j for j in range(k + 1, len(blocks)) if blocks[j].section != k), len(blocks))
            sections[_anchor(block.text)] = any(_block_commands(b) for b in blocks[k:end])

    def linked(part: str) -> bool:
        return any(sections.get(a, False) for a in re.findall(r"\]\(#([\w-]+)\)", part))

    missing = []
    for k, block in enumerate(blocks):
        if block.kind not in ("para", "table"):
            continue
        if any(_block_commands(b) for b in blocks[block.section : k + 1]):
            continue
        if not_measured_marks is not None:  # in the paragraph, or in the one that leads into a table
            lead = blocks[k - 1].text if block.kind == "table" and blocks[k - 1].kind == "para" else ""
            if not_measured_marks.search(block.text + lead):
                continue
        rows = block.text.splitlines()[2:] if block.kind == "table" else [block.text]
        for n, part in enumerate(rows):
            if _measured(part) and not linked(part):
                line = block.line + (n + 2 if block.kind == "table" else 0)
                missing.append(f"{line}: {', '.join(_measured(part)[:3])}: {part[:70]}")
    return missing


def test_every_measured_number_in_the_docs_names_the_command_that_produced_it():
    missing = []
    for doc in NUMBER_DOCS:
        marks = NOT_MEASURED_MARKS if doc == "docs/DEPLOY.md" else None
        missing += [f"{doc}:{m}" for m in _numbers_without_a_command((ROOT / doc).read_text(), marks)]
    assert not missing, "measured numbers without a command in their section:\n" + "\n".join(missing)


def test_the_number_check_fails_on_a_table_or_paragraph_without_a_command():
    table = "## Speed\n\nMeasured by hand.\n\n| run | time |\n|---|---|\n| a | 12.5 ms |\n"
    para = "## Quality\n\nThe full model reached 0.0967 Recall@20.\n"
    for doc in (table, para):
        assert len(_numbers_without_a_command(doc)) == 1, doc
        assert _numbers_without_a_command(doc.replace("\n\n", "\n\n`make bench-train` gave:\n\n", 1)) == []
    # a command in a fenced block above counts; one in a later section does not; a comment is no heading
    fenced = "## Speed\n\n```bash\n# the run\nnice -n 10 python -m benchmarks.train_speed --steps 10\n```\n\n"
    assert _numbers_without_a_command(fenced + "It took 14.1 s per epoch.\n") == []
    assert len(_numbers_without_a_command("## A\n\nIt took 14.1 s.\n\n" + fenced)) == 1
    # a summary row may link to the section holding its command; a link to one without does not count
    summary = "## Summary\n\n| x | y |\n|---|---|\n| epoch | 15.2 s ([speed](#speed)) |\n\n"
    assert _numbers_without_a_command(summary + fenced) == []
    assert len(_numbers_without_a_command(summary + "## Speed\n\nNo command.\n")) == 1
    # targets, settings and plain counts are not measurements
    assert _measured("target ≤ 25 s, 9,308 users, epochs=3, Python 3.11, 128 x 6,710") == []
    assert _measured("15.2 s, 861 MB, 0.0967, 2.75x, 60%") == ["15.2 s", "861 MB", "0.0967", "2.75x", "60%"]


def _tables_with_context(text: str) -> list[tuple[int, str, str]]:
    """(line number, first row, the text from the nearest heading or table above down to the table)."""
    out, start = [], 0
    blocks = _blocks(text)
    for k, block in enumerate(blocks):
        if block.kind == "heading":
            start = k
        elif block.kind == "table":
            rows = block.text.splitlines()
            if _NUMBER.search("\n".join(rows[2:])):
                context = "\n".join(
                    b.text if b.kind != "code" else "\n".join(_block_commands(b))
                    for b in blocks[start : k + 1]
                )
                out.append((block.line, rows[0], context))
            start = k + 1  # the next table needs its own command
    return out


def test_every_table_of_serving_numbers_names_the_command_between_the_previous_table_and_itself():
    """The serving doc's stricter rule: each table of numbers gets its own command."""
    doc = "docs/BENCHMARKS-serving.md"
    missing = [
        f"{doc}:{line}: {header[:80]}"
        for line, header, context in _tables_with_context((ROOT / doc).read_text())
        if not _commands(context)
    ]
    assert not missing, "tables without a command:\n" + "\n".join(missing)


def test_every_command_named_in_the_benchmark_docs_exists():
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    stale = []
    for doc in [*BENCH_DOCS, "docs/DEPLOY.md", "docs/MODEL.md", "docs/TESTING.md"]:
        for command in {c for b in _blocks((ROOT / doc).read_text()) for c in _block_commands(b)}:
            command = re.sub(r"^python3? ", "python ", command)
            if command.startswith("make "):
                ok = command.split()[1] in targets
            elif command.startswith("python -m "):
                name = command.split()[2]
                module = name.replace(".", "/")
                ok = (ROOT / f"{module}.py").is_file() or (ROOT / module / "__main__.py").is_file()
                # an installed tool (python -m pytest); the repository's own packages must be files here
                ok = ok or ("." not in name and not (ROOT / name).exists() and find_spec(name) is not None)
            else:
                ok = (ROOT / command.split()[1]).is_file()
            if not ok:
                stale.append(f"{doc}: {command}")
    assert not stale, "commands that do not exist in this repository:\n" + "\n".join(sorted(stale))


def test_the_table_check_fails_on_a_table_without_a_command():
    doc = "## Speed\n\nMeasured by hand.\n\n| run | ms |\n|---|---|\n| a | 12.5 |\n"
    assert _tables_with_context(doc) and not _commands(_tables_with_context(doc)[0][2])
    with_command = "## Speed\n\n`make bench-train` gave:\n\n| run | ms |\n|---|---|\n| a | 12.5 |\n"
    assert _commands(_tables_with_context(with_command)[0][2]) == ["make bench-train"]
