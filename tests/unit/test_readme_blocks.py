"""Reading the code blocks of the README and of docs/*.md and their `readme-test` tags
(tests/support/readme.py): a block without a tag is executed; a tag that cannot apply is an error
naming its file and line, never ignored."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT
from tests.support.readme import ReadmeTagError, documents, missing_references, project_blocks, read_blocks

FENCE = "```"


def write(tmp_path: Path, text: str) -> Path:
    readme = tmp_path / "README.md"
    readme.write_text(text.replace("'''", FENCE))
    return readme


def test_blocks_default_to_executed_and_tags_apply_to_the_block_below(tmp_path: Path) -> None:
    readme = write(
        tmp_path,
        """# Title
'''
diagram
'''
## Run it
'''bash
make demo
'''
<!-- readme-test: slow; exit 0,2 -->
'''bash
sigpipe verify x --writer 1
'''
<!-- readme-test: server http://127.0.0.1:5000/health -->
'''bash
mlflow ui --port 5000
'''
### Elsewhere
<!-- readme-test: covered-by .ci/run, tests/x.py::test_y; why .ci/run is make test -->
'''console
$ make test
461 passed
'''
'''yaml
data: {source: local}
'''
""",
    )
    blocks = read_blocks(readme)
    assert [(block.language, block.executed) for block in blocks] == [
        ("", False),
        ("bash", True),
        ("bash", True),
        ("bash", True),
        ("console", True),
        ("yaml", False),
    ]
    plain, demo, verify, server, console, _ = blocks
    assert not demo.tags.slow and demo.tags.exit_codes == (0,) and not demo.tags.covered_by
    assert demo.id == "run-it-1" and demo.script() == "make demo\n"
    assert verify.tags.slow and verify.tags.exit_codes == (0, 2)
    assert server.tags.server_url == "http://127.0.0.1:5000/health"
    assert console.tags.covered_by == (".ci/run", "tests/x.py::test_y") and console.id == "elsewhere-1"
    assert console.script() == "make test"  # output lines are not commands
    assert plain.id == "title-1" and verify.id == "run-it-2"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<!-- readme-test: fast -->\n'''bash\nls\n'''\n", "README.md:1: unknown readme-test item 'fast'"),
        ("<!-- readme-test: slow -->\n\n'''bash\nls\n'''\n", "README.md:1: a readme-test tag must be on the line"),
        ("<!-- readme-test: slow -->\n'''yaml\na: 1\n'''\n", "README.md:1: tag above a yaml block"),
        ("<!-- readme-test: covered-by .ci/run -->\n'''bash\nls\n'''\n", "README.md:1: `covered-by` needs `; why"),
        ("<!-- readme-test: exit two -->\n'''bash\nls\n'''\n", "README.md:1: `exit` takes exit statuses"),
        ("<!-- readme-test: server localhost:80 -->\n'''bash\nls\n'''\n", "README.md:1: `server` takes"),
        ("text\n'''bash\nls\n", "README.md:2: code block is never closed"),
    ],
)
def test_a_tag_that_cannot_apply_names_its_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ReadmeTagError, match=re.escape(message)):
        read_blocks(write(tmp_path, text))


def test_covered_by_names_must_exist() -> None:
    assert missing_references((".ci/run", "tests/conftest.py::trained"), PROJECT_ROOT) == []
    assert missing_references(("tests/conftest.py::no_such_test", "tests/absent.py"), PROJECT_ROOT) == [
        "tests/conftest.py::no_such_test (no function no_such_test in tests/conftest.py)",
        "tests/absent.py (no file tests/absent.py)",
    ]


def test_a_docs_file_names_its_blocks_and_errors_by_its_path(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "serving.md").write_text("# Serving\n## Registry and inference\n'''bash\nls\n'''\n".replace("'''", FENCE))
    (docs / "broken.md").write_text("<!-- readme-test: fast -->\n'''bash\nls\n'''\n".replace("'''", FENCE))
    write(tmp_path, "# Title\n'''bash\nls\n'''\n")
    assert documents(tmp_path) == [tmp_path / "README.md", docs / "broken.md", docs / "serving.md"]
    (block,) = read_blocks(docs / "serving.md", "docs/serving.md")
    assert block.id == "docs-serving-registry-and-inference-1" and block.where == "docs/serving.md:3"
    (title,) = read_blocks(tmp_path / "README.md")
    assert title.id == "title-1" and title.where == "README.md:2"  # README ids carry no file name
    with pytest.raises(ReadmeTagError, match=re.escape("docs/broken.md:1: unknown readme-test item 'fast'")):
        project_blocks(tmp_path)


def test_the_project_readme_tags_are_valid() -> None:
    blocks = read_blocks(PROJECT_ROOT / "README.md")
    assert any(block.executed and not block.tags.covered_by and not block.tags.slow for block in blocks)


def test_every_docs_file_is_read_and_its_tags_are_valid() -> None:
    """The topic files in docs/ hold command blocks moved out of the README: they are read (tags and
    all) like the README's, so tests/integration/test_readme.py runs or checks each of them."""
    paths = documents(PROJECT_ROOT)
    assert paths[0] == PROJECT_ROOT / "README.md"
    assert set(paths[1:]) == set((PROJECT_ROOT / "docs").glob("*.md")) != set()
    blocks = project_blocks(PROJECT_ROOT)
    assert any(block.executed for block in blocks if block.source.startswith("docs/"))
    executed = [block.id for block in blocks if block.executed]
    assert len(set(executed)) == len(executed), executed  # one test id per block
