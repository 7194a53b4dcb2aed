"""The lock files (requirements/*.txt) agree with setup.cfg and pyproject.toml, and the virtualenv holds exactly its
lock: scripts/lock --check and --check-installed, which `make install` and this suite run."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
LOCK_SCRIPT = ROOT / "scripts" / "lock"


def run_lock_script(script: Path, *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *arguments], capture_output=True, text=True, timeout=60)


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """The files the locks are made from, the locks and the script, in a folder of their own to edit."""
    for name in ("setup.cfg", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "requirements", tmp_path / "requirements")
    (tmp_path / "scripts").mkdir()
    shutil.copy(LOCK_SCRIPT, tmp_path / "scripts" / "lock")
    return tmp_path


def test_every_lock_agrees_with_the_requirements():
    finished = run_lock_script(LOCK_SCRIPT, "--check")
    assert finished.returncode == 0, finished.stderr


def test_the_locks_pin_every_package_with_hashes():
    for lock in sorted((ROOT / "requirements").glob("*.txt")):
        entries = re.split(r"\n(?=[a-z0-9])", lock.read_text().split("\n\n")[0].strip())
        pins = [entry for entry in entries if "==" in entry.splitlines()[0]]
        assert pins, lock.name
        for pin in pins:
            assert "--hash=sha256:" in pin, f"{lock.name}: {pin.splitlines()[0]} has no hash"


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path.name} has no {old!r} to edit"
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(("file", "old", "new", "named"), [
    ("setup.cfg", "    tenacity>=9\n", "    tenacity>=9\n    humanize>=4\n", "humanize>=4"),  # added
    ("setup.cfg", "    flask>=3.1,<4\n", "    flask>=3.0,<4\n", "flask>=3.0,<4"),  # range widened
    ("setup.cfg", "    lxml>=5.2\n", "    lxml>=5.2,<6\n", "lxml>=5.2,<6"),  # narrowed below the pin
    ("setup.cfg", "    redis>=5\n", "", "redis>=5"),  # removed
    ("setup.cfg", "    pytest>=8\n", "    pytest>=8\n    freezegun>=1.5\n", "freezegun>=1.5"),  # an extra's
    ("pyproject.toml", '"setuptools>=64"', '"setuptools>=70"', "setuptools>=70"),  # a build requirement
], ids=["added", "range-widened", "range-narrowed", "removed", "extra-added", "build-requirement"])
def test_the_check_fails_when_the_requirements_change_without_relocking(project_copy, file, old, new, named):
    assert run_lock_script(project_copy / "scripts" / "lock", "--check").returncode == 0
    edit(project_copy / file, old, new)
    finished = run_lock_script(project_copy / "scripts" / "lock", "--check")
    assert finished.returncode == 1
    assert str(Requirement(named)) in finished.stderr  # (the script names it as packaging spells it)
    assert "make lock" in finished.stderr


def test_the_check_fails_when_a_lock_pins_a_version_outside_its_range(project_copy):
    lock = project_copy / "requirements" / "runtime.txt"
    pinned = re.search(r"^marshmallow==(\S+) ", lock.read_text(), re.MULTILINE)[1]
    edit(lock, f"marshmallow=={pinned} ", "marshmallow==3.26.1 ")
    finished = run_lock_script(project_copy / "scripts" / "lock", "--check")
    assert finished.returncode == 1
    range_ = str(Requirement("marshmallow>=4,<5"))
    assert f"runtime.txt pins marshmallow==3.26.1, outside {range_}" in finished.stderr


def installed_lock() -> Path:
    """The lock `make install` built this virtualenv from (it writes the lock's path into its stamp)."""
    stamp = Path(sys.prefix) / ".installed"
    return ROOT / (stamp.read_text().strip() if stamp.exists() else "requirements/dev.txt")


def test_this_virtualenv_holds_exactly_its_lock():
    finished = run_lock_script(LOCK_SCRIPT, "--check-installed", str(installed_lock()))
    assert finished.returncode == 0, finished.stderr


def test_the_installed_check_names_a_package_at_another_version(tmp_path):
    lock = tmp_path / "lock.txt"
    text = installed_lock().read_text()
    pinned = re.search(r"^flask==(\S+) ", text, re.MULTILINE)[1]
    lock.write_text(text.replace(f"flask=={pinned} ", "flask==0.12.5 ", 1))
    finished = run_lock_script(LOCK_SCRIPT, "--check-installed", str(lock))
    assert finished.returncode == 1
    assert f"flask is installed at {pinned}, locked at 0.12.5" in finished.stderr
