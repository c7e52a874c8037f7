"""The fenced code blocks of the README and of the topic files in docs/, with the `readme-test` tags
that say how a test runs each one.

Every ```python, ```bash, ```sh, ```shell and ```console block of README.md and docs/*.md
(`documents`) is executed by tests/integration/test_readme.py; blocks in other languages (yaml
fragments, diagrams) are text.
An HTML comment on the line right above a block's fence changes how it runs, items separated by `;`:

    <!-- readme-test: slow -->                      run it, in the slow-marked part of the suite
    <!-- readme-test: exit 0,2 -->                  these exit statuses of its commands are success
    <!-- readme-test: server http://127.0.0.1:5000/health -->
                                                    it starts a server: run it until this URL answers, then stop it
    <!-- readme-test: covered-by tests/x.py::test_y, .ci/run; why ... -->
                                                    not run here: the named tests (or files) run exactly these
                                                    commands; `why` says how, and the test checks each name exists

The default, with no tag, is "executed" in the fast suite.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

EXECUTED_LANGUAGES = frozenset({"python", "bash", "sh", "shell", "console"})
TAG_PATTERN = re.compile(r"^<!--\s*readme-test:\s*(?P<items>.*?)\s*-->$")
FENCE_PATTERN = re.compile(r"^(?P<fence>```+)\s*(?P<language>[\w+-]*)\s*$")
HEADING_PATTERN = re.compile(r"^#+\s+(?P<title>.+?)\s*$")
CONSOLE_PROMPT = "$ "
TAG_KEYS = ("slow", "exit", "server", "covered-by", "why")
DOCS_FOLDER = "docs"  # its *.md topic files are read like README.md


class ReadmeTagError(ValueError):
    """A `readme-test` tag that cannot be read, named by its file and line."""


@dataclass(frozen=True)
class BlockTags:
    """How a test runs one block (see the module docstring)."""

    slow: bool = False
    exit_codes: tuple[int, ...] = (0,)
    server_url: str | None = None
    covered_by: tuple[str, ...] = ()
    why: str = ""


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README or of a docs/ file."""

    language: str
    code: str
    line: int  # 1-based line of the opening fence
    heading: str  # the nearest heading above it
    ordinal: int = 1  # its place among the blocks under that heading
    tags: BlockTags = field(default_factory=BlockTags)
    source: str = "README.md"  # the file it is in, relative to the project root

    @property
    def where(self) -> str:
        """`file:line` of its opening fence, for messages."""
        return f"{self.source}:{self.line}"

    @property
    def executed(self) -> bool:
        """Whether the block is a command or snippet (a language the tests execute)."""
        return self.language in EXECUTED_LANGUAGES

    @property
    def id(self) -> str:
        """A readable test id that survives edits elsewhere: the heading's words and the block's place
        under it, e.g. `two-commands-2`, after the file's name for a block outside README.md
        (`docs-serving-registry-and-inference-1`)."""
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-") or "top"
        if self.source == "README.md":
            return f"{slug}-{self.ordinal}"
        document = re.sub(r"[^a-z0-9]+", "-", self.source.lower().removesuffix(".md")).strip("-")
        return f"{document}-{slug}-{self.ordinal}"

    def script(self) -> str:
        """The code to run: a console block's `$ ` lines only (its other lines are output)."""
        if self.language != "console":
            return self.code
        return "\n".join(
            line.removeprefix(CONSOLE_PROMPT) for line in self.code.splitlines() if line.startswith(CONSOLE_PROMPT)
        )


def parse_tags(items: str, line: int, source: str = "README.md") -> BlockTags:
    """Read the items of one `readme-test:` comment (`slow; exit 0,2; ...`) written on line `line` of `source`."""
    values: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in items.split(";"))):
        key, _, argument = item.partition(" ")
        argument = argument.strip()
        if key not in TAG_KEYS:
            raise ReadmeTagError(f"{source}:{line}: unknown readme-test item {key!r}: use one of {', '.join(TAG_KEYS)}")
        if key == "slow":
            values["slow"] = True
        elif key == "exit":
            try:
                values["exit_codes"] = tuple(int(code) for code in argument.split(","))
            except ValueError:
                raise ReadmeTagError(f"{source}:{line}: `exit` takes exit statuses like `exit 0,2`") from None
        elif key == "server":
            if not argument.startswith("http://127.0.0.1:"):
                raise ReadmeTagError(f"{source}:{line}: `server` takes the http://127.0.0.1:<port>/... URL to wait for")
            values["server_url"] = argument
        elif key == "covered-by":
            values["covered_by"] = tuple(filter(None, (name.strip() for name in argument.split(","))))
        else:
            values["why"] = argument
    tags = BlockTags(**values)  # type: ignore[arg-type]
    if tags.covered_by and not tags.why:
        raise ReadmeTagError(f"{source}:{line}: `covered-by` needs `; why ...` saying how those tests run the block")
    if not tags.covered_by and tags.why:
        raise ReadmeTagError(f"{source}:{line}: `why` belongs to a `covered-by` item")
    return tags


def documents(root: Path) -> list[Path]:
    """The files whose command blocks the tests run: README.md and every docs/*.md topic file."""
    return [root / "README.md", *sorted((root / DOCS_FOLDER).glob("*.md"))]


def read_blocks(readme: Path, source: str | None = None) -> list[Block]:
    """Every fenced code block of `readme`, in order, with the tags written right above it. `source`
    names the file in messages and test ids (default: its file name, as for the project's README.md;
    a docs file is `docs/<name>.md`).

    A tag that is not directly above a fence, or sits above a block in a language the tests do not
    execute, is an error: a tag must never silently stop applying."""
    source = source or readme.name
    lines = readme.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    heading = ""
    pending: tuple[BlockTags, int] | None = None
    index = 0
    while index < len(lines):
        text = lines[index].strip()
        number = index + 1
        fence = FENCE_PATTERN.match(text)
        tag = TAG_PATTERN.match(text)
        if pending is not None and not fence:
            raise ReadmeTagError(
                f"{source}:{pending[1]}: a readme-test tag must be on the line right above a ``` fence"
            )
        if tag:
            pending = (parse_tags(tag.group("items"), number, source), number)
        elif fence:
            closing = fence.group("fence")
            end = next((j for j in range(index + 1, len(lines)) if lines[j].strip() == closing), None)
            if end is None:
                raise ReadmeTagError(f"{source}:{number}: code block is never closed")
            tags = pending[0] if pending else BlockTags()
            ordinal = sum(1 for earlier in blocks if earlier.heading == heading) + 1
            code = "\n".join(lines[index + 1 : end]) + "\n"
            block = Block(fence.group("language").lower(), code, number, heading, ordinal, tags, source)
            if pending and not block.executed:
                raise ReadmeTagError(
                    f"{source}:{pending[1]}: tag above a {block.language or 'plain'} block, which is not run"
                )
            blocks.append(block)
            pending = None
            index = end
        elif heading_match := HEADING_PATTERN.match(lines[index]):
            heading = heading_match.group("title")
        index += 1
    return blocks


def project_blocks(root: Path) -> list[Block]:
    """The blocks of every file of `documents(root)`, each named by its path relative to `root`."""
    return [block for path in documents(root) for block in read_blocks(path, path.relative_to(root).as_posix())]


def missing_references(references: tuple[str, ...], root: Path) -> list[str]:
    """The `covered-by` names that do not exist: `path` must be a file under `root`, and in
    `path::name`, `name` a function (test or fixture) defined in it."""
    missing = []
    for reference in references:
        path, _, name = reference.partition("::")
        file = root / path
        if not file.is_file():
            missing.append(f"{reference} (no file {path})")
        elif name and not re.search(rf"^\s*(async\s+)?def {re.escape(name)}\(", file.read_text(), re.MULTILINE):
            missing.append(f"{reference} (no function {name} in {path})")
    return missing
