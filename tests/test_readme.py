"""README.md stays true: the quickstart, the test command CI runs, every CLI verb documented."""

from __future__ import annotations

import re
from pathlib import Path

from memprof.cli import VERBS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def quickstart_commands() -> list[str]:
    section = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S)
    assert block, "the Quickstart has a code block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_quickstart_is_install_main_job_test() -> None:
    commands = quickstart_commands()
    assert len(commands) == 3, commands
    assert commands[0].startswith("pip install")
    assert commands[1].startswith("memprof ")


def test_ci_runs_the_readme_test_command() -> None:
    test_command = quickstart_commands()[2]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(rf"^{re.escape(test_command)}$", ci, re.M), test_command


def test_every_cli_verb_has_a_section_with_an_example() -> None:
    for verb in VERBS:
        assert f"memprof {verb}" in README, verb
