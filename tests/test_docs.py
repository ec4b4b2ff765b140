"""Meta-tests: the README documents every hook, command and export field; every hook has a test."""

from __future__ import annotations

import inspect
import re
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from halo_integrator_core import hookspecs
from halo_integrator_core.cli import cli
from halo_integrator_core.export import EXPORTS, export_fields

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
HOOKS = sorted(
    name
    for name, value in vars(hookspecs).items()
    if callable(value) and hasattr(value, f"{hookspecs.PROJECT_NAME}_spec")
)


def test_the_hook_contract_is_what_we_think_it_is():
    assert (
        sorted(
            [
                "check_config",
                "declare_modules",
                "fetch_assets",
                "fetch_licences",
                "fetch_prices",
                "fetch_subscriptions",
                "fetch_tenants",
                "fetch_usage",
                "fetch_users",
                "on_webhook",
                "register_commands",
                "run_finished",
                "web_routes",
            ]
        )
        == HOOKS
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_in_the_readme(hook: str):
    spec = getattr(hookspecs, hook)
    assert f"### `{hook}`" in README, f"README lacks a '### `{hook}`' section"
    params = ", ".join(inspect.signature(spec).parameters)
    assert f"`{hook}({params})" in README, f"README does not show the signature of {hook}"
    assert spec.__doc__ and len(spec.__doc__.split()) > 20, f"{hook} needs a real docstring"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test(hook: str):
    tests = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("test_*.py"))
    assert re.search(rf"^def test_hook_{hook}(_\w*)?\(", tests, re.MULTILINE), (
        f"no test_hook_{hook}_... test"
    )


def _commands(group: click.Group, prefix: str = "") -> list[str]:
    names = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            names += _commands(command, f"{prefix}{name} ")
        else:
            names.append(f"{prefix}{name}")
    return names


@pytest.mark.parametrize("command", _commands(cli))
def test_every_command_is_in_the_readme(command: str):
    assert f"`{command}" in README or f"/ `{command}" in README, f"README lacks `{command}`"


@pytest.mark.parametrize("what", sorted(EXPORTS))
def test_every_export_field_is_documented(what: str):
    row = re.search(rf"^\| `{re.escape(what)}` \| (.+) \|$", README, re.MULTILINE)
    assert row, f"README has no export row for {what}"
    assert row.group(1).split(", ") == export_fields(what)


def test_the_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    command = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && pytest'
    assert command in README
    assert f"\n{command}\n" in ci


@pytest.mark.skipif(
    shutil.which("ruff", path=str(Path(sys.executable).parent)) is None, reason="ruff not installed"
)
def test_the_code_is_linted_and_formatted():
    ruff = str(Path(sys.executable).parent / "ruff")
    lint = subprocess.run([ruff, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout
    fmt = subprocess.run([ruff, "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stdout
