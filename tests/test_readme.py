"""README's commands are real: every `finercut-tui` line parses, the marked examples run."""

import re
import shlex
from pathlib import Path

import pytest
from builders import save_tiny_checkpoint

from finercut_tui.cli import COMMANDS, build_parser, main

README = (Path(__file__).parents[1] / "README.md").read_text()


def fenced_blocks(text: str):
    """(marker, lines) for each ```bash block; marker is the HTML comment right above it, if any."""
    for match in re.finditer(r"(<!-- example: (\w+) -->\n)?```bash\n(.*?)```", text, re.S):
        yield match.group(2), match.group(3).splitlines()


def command_lines(lines):
    return [line.split("  #")[0].strip() for line in lines if line.startswith("finercut-tui ")]


def all_commands():
    return [cmd for _, lines in fenced_blocks(README) for cmd in command_lines(lines)]


def test_readme_has_examples():
    assert len(all_commands()) >= 15
    assert any(marker == "runs" for marker, _ in fenced_blocks(README))


@pytest.mark.parametrize("command", all_commands())
def test_every_readme_command_parses(command):
    args = build_parser().parse_args(shlex.split(command)[1:])
    assert callable(args.func)


def test_command_table_matches_the_parser():
    section = README.split("| command | what it does |", 1)[1].split("\n\n", 1)[0]
    table = set(re.findall(r"^\| `(\w+)[ `]", section, re.M))
    subparsers = next(a for a in build_parser()._actions if a.dest == "command")
    assert table == set(subparsers.choices) == set(COMMANDS)


def test_runnable_examples_run_on_a_tiny_model(tmp_path, capsys):
    model = tmp_path / "tiny"
    save_tiny_checkpoint(model, "llama")
    block = next(lines for marker, lines in fenced_blocks(README) if marker == "runs")
    for command in command_lines(block):
        command = command.replace("smollm2-135m", str(model)).replace("/tmp/finercut-readme", str(tmp_path))
        code = main(shlex.split(command)[1:])
        err = capsys.readouterr().err
        assert code == 0, f"{command}\n{err[-2000:]}"
    assert (tmp_path / "grid.svg").read_text().lstrip().startswith(("<svg", "<?xml"))
    assert (tmp_path / "pruned" / "PRUNING.md").is_file()
