"""The documentation site: the generated references cover every option of every command and every public API name,
every page of the nav exists, the README stays a quickstart whose first bash block drives .ci/run, and the examples
marked to run (docs/CONTRIBUTING-docs.md) still do."""

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[dev]'")
griffe = pytest.importorskip("griffe", reason="the docs extra is not installed: pip install -e '.[dev]'")
yaml = pytest.importorskip("yaml")

import imgcls  # noqa: E402
from imgcls.cli import build_parser  # noqa: E402
from imgcls.options import TrainConfig  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
RUN_MARK = "<!-- docs-test -->"
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)[^)]*\)|<img [^>]*src=\"([^\"]+)\"")


def _load_hooks():
    spec = importlib.util.spec_from_file_location("imgcls_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load_hooks()


def all_commands(parser: argparse.ArgumentParser, prog: str = "imgcls"):
    """(command line, parser) of imgcls and every subcommand, walked here apart from the generator under test."""
    yield prog, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from all_commands(sub, f"{prog} {name}")


def sections(page: str) -> dict[str, str]:
    """The CLI reference's text under each `## `imgcls ...`` heading."""
    parts = re.split(r"^## `(imgcls[^`]*)`$", page, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def test_every_option_of_every_command_is_in_the_cli_reference():
    page = hooks.cli_reference()
    documented = sections(page)
    for prog, parser in all_commands(build_parser()):
        assert prog in documented, f"{prog} has no section in the CLI reference"
        if prog != "imgcls":
            assert f"(#{prog.replace(' ', '-')})" in page, f"{prog} is missing from the table of commands"
        rows = [line for line in documented[prog].splitlines() if line.startswith("| `")]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
                continue
            names = action.option_strings or [hooks.metavar(action)]
            for name in names:
                assert any(re.match(rf"\| `([^`]* )?{re.escape(name)}[ `/,]", row) for row in rows), f"{prog} {name} is not in its table"


def test_train_options_keep_their_help_choices_and_default_in_the_cli_reference():
    train = sections(hooks.cli_reference())["imgcls train"]
    assert "| `--optimizer sgd|adam|adamw|muon` | sgd is SGD with Nesterov momentum" in train
    assert "| `--augment / --no-augment` | random augmentation of training batches | on |" in train
    # argparse's %% comes out as % and the default moves to its own column
    assert "over the first 23%, down to 7% | recipe |" in train


def test_every_train_option_is_a_config_key():
    page = hooks.config_reference()
    for f in fields(TrainConfig):
        assert f"| `{f.name}`<br>`--{f.name.replace('_', '-')}` |" in page, f"{f.name} is not in the config.json keys"


def test_every_public_name_is_in_the_api_reference_and_resolves():
    page = hooks.api_reference()
    package = griffe.load("imgcls", search_paths=[str(ROOT / "src")])
    for name in imgcls.__all__:
        path = hooks.api_path(name)
        assert f"::: {path}\n" in page and f"heading: imgcls.{name}\n" in page, f"imgcls.{name} is not in the API reference"
        found = package[path.removeprefix("imgcls.")]
        assert found.name == name, f"mkdocstrings would not find {path}"


def test_prose_docstrings_become_markdown():
    text = "What it does.\nout: the run folder (runs/<data>-<n>).\n`config`: a file,\n    or a dict, as `<here>`."
    assert hooks.prose_to_markdown(text) == (
        "What it does.\n\n- `out`: the run folder (runs/&lt;data>-&lt;n>).\n- `config`: a file,\n    or a dict, as `<here>`."
    )


def nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_page_of_the_nav_exists_and_every_page_is_in_the_nav():
    nav = nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])
    written = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    missing = [page for page in nav if page not in written and page not in hooks.GENERATED]
    assert not missing, f"pages in mkdocs.yml's nav but not in docs/: {missing}"
    assert not written - set(nav), f"pages in docs/ that the nav leaves out: {sorted(written - set(nav))}"


def test_readme_first_bash_block_is_the_two_set_up_commands():
    block = re.search(r"^```bash\n(.*?)^```$", README.read_text(), flags=re.M | re.S).group(1)
    assert block.splitlines() == ['pip install -e ".[dev]"', "pytest"]  # what .ci/run executes


def test_readme_is_a_quickstart_of_at_most_200_lines():
    assert len(README.read_text().splitlines()) <= 200


def test_readme_links_and_pictures_resolve():
    text = README.read_text()
    targets = [a or b for a, b in LINK.findall(text)]
    assert any(t.startswith("docs/") for t in targets), "the README links into the documentation"
    for target in targets:
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        assert (ROOT / target.split("#")[0]).exists(), f"README.md links to {target}, which does not exist"


def examples(page: Path) -> list[tuple[str, str, str]]:
    """(where, language, code) of each block marked to run, in page order; a mark shown inside a fenced block (as
    the writers' guide shows one) is an example of the mark, not a mark."""
    lines = page.read_text().splitlines()
    found, fence = [], None
    for i, line in enumerate(lines):
        if fence:
            fence = None if line.strip() == fence else fence
        elif line.startswith("```"):
            fence = re.match(r"`+", line).group()
        elif line.strip() == RUN_MARK:
            block = re.fullmatch(r"```(bash|python)", lines[i + 1] if i + 1 < len(lines) else "")
            assert block, f"{page.relative_to(ROOT)}:{i + 1}: {RUN_MARK} must sit right above a ```bash or ```python block"
            end = lines.index("```", i + 2)
            found.append((f"{page.relative_to(ROOT)}:{i + 3}", block.group(1), "\n".join(lines[i + 2 : end]) + "\n"))
    return found


def pages_with_examples() -> list[Path]:
    return [p for p in [README, *sorted(DOCS.rglob("*.md"))] if RUN_MARK in p.read_text() and examples(p)]


def test_run_marks_sit_right_above_bash_or_python_blocks():
    for page in [README, *DOCS.rglob("*.md")]:
        examples(page)  # asserts on a misplaced mark
    assert not examples(DOCS / "CONTRIBUTING-docs.md"), "the writers' guide shows the mark inside a fence: nothing to run"


# Runs a page's marked blocks in order in one process, so that Python names carry over between blocks. They run in
# __main__ itself, as typed into `python`: a class a block defines is then __main__.Net, which imgcls can find again.
DRIVER = """
import json, subprocess, sys
namespace = sys.modules["__main__"].__dict__
for where, language, code in json.load(sys.stdin):
    print(f"--- {where}", flush=True)
    if language == "python":
        exec(compile(code, where, "exec"), namespace)
    else:
        subprocess.run(["bash", "-euo", "pipefail", "-c", code], check=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("page", pages_with_examples(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_the_marked_examples_run(page, tmp_path):
    from importlib import resources

    import numpy as np
    from PIL import Image

    with np.load(resources.files("imgcls.assets") / "mnist_sample.npz") as sample:
        Image.fromarray(sample["test_images"][1]).save(tmp_path / "digit.png")  # a 7
    env = {**os.environ, "IMGCLS_OFFLINE": "1", "MPLBACKEND": "agg"}
    done = subprocess.run([sys.executable, "-c", DRIVER], input=json.dumps(examples(page)), cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
