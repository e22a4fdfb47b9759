"""After a plain `pip install .` (a fresh venv, no extras, nothing of the development checkout on
the path), every interface users name from outside resolves (issue 20): the console script and
`python -m supervisor`, each shipped handler target, the old handler API import path, and every
module of the packages (the installed package holds every folder of the layout)."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.architecture.layout_rules import module_files
from tests.harness.deploy_build import PIP_TIMEOUT, base_python, builder_env, clean_copy

pytestmark = [pytest.mark.slow]

# The targets README documents, and the module each resolves to.
SHIPPED_TARGETS = {"tenant_proc.handlers:jsonl": "tenant_proc.handlers.basic",
                   "tenant_proc.handlers:log": "tenant_proc.handlers.basic",
                   "tenant_proc.handlers:null": "tenant_proc.handlers.basic",
                   "tenant_proc.handlers:command": "tenant_proc.handlers.command_runner",
                   "tenant_proc.handlers:webhook": "tenant_proc.handlers.webhook_sender",
                   "tenant_proc.handlers:supabase_insert": "tenant_proc.handlers.supabase"}

# Runs in the installed venv, from an empty directory. The handler modules are imported first:
# an imported submodule becomes an attribute of its package, so a module named after a handler
# would shadow it from then on.
RESOLVE = textwrap.dedent("""
    import importlib, json, sys, types
    for name in sys.argv[2].split(","):
        importlib.import_module(name)
    from tenant_proc.handlers.loader import resolve_target
    from tenant_proc.handler_loader import PermanentHandlerError
    from tenant_proc.handlers import PermanentHandlerError as Same
    from tenant_proc.message import Email
    found = {}
    for target in sys.argv[1].split(","):
        value = resolve_target(target)
        found[target] = [callable(value), isinstance(value, types.ModuleType), value.__module__]
    print(json.dumps({"targets": found, "same_error": PermanentHandlerError is Same,
                      "email": Email.__module__,
                      "files": sorted({m.__file__.split("/site-packages/")[0]
                                       for m in map(sys.modules.get, sys.argv[2].split(","))})}))
""")


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("plain-install")
    src = clean_copy(root / "src")
    python = base_python((src / ".python-version").read_text().strip())
    env_dir = root / "venv"
    subprocess.run([python, "-m", "venv", str(env_dir)], check=True, timeout=120)
    # `pip install .` in the checkout, literally, as the README's deploy sections say.
    done = subprocess.run([str(env_dir / "bin" / "pip"), "install", "."], cwd=src,
                          capture_output=True, text=True, timeout=PIP_TIMEOUT, env=builder_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    yield env_dir


def _run(venv: Path, argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120,
                          env=builder_env(PATH=f"{venv / 'bin'}:/usr/bin:/bin"))


@pytest.mark.parametrize("argv", [["idle-supervisor", "--help"],
                                  ["python", "-m", "supervisor", "--help"]])
def test_the_console_script_and_module_run(venv, tmp_path, argv):
    done = _run(venv, argv, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "{run,status,reload,stop,check,cluster,failed,retry" in done.stdout.replace("\n", "")


def test_every_shipped_handler_target_resolves_to_its_handler(venv, tmp_path):
    repo = Path(__file__).resolve().parents[2]
    modules = sorted(name for name in module_files(repo) if not name.endswith("__main__"))
    done = _run(venv, [str(venv / "bin" / "python"), "-c", RESOLVE, ",".join(SHIPPED_TARGETS),
                       ",".join(modules)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout)
    assert answer["targets"] == {target: [True, False, module]
                                 for target, module in SHIPPED_TARGETS.items()}
    assert answer["same_error"] is True
    assert answer["email"] == "tenant_proc.message.model"
    # Every module came from the installed venv, none from a source tree.
    assert answer["files"] == [str(venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}")]
