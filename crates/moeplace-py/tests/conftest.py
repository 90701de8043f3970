"""Shared fixtures: the repository's `moeplace` binary and `../shared/data`.

Without shared data or the binary a test is skipped with a message; with `CI` set
it fails instead, so CI never passes by skipping.
"""

import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
SHARED = ROOT.parent / "shared" / "data"


def _missing(what: str):
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing and CI is set")
    pytest.skip(f"{what} is missing; skipped (set CI to make this a failure)")


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not SHARED.is_dir():
        _missing(f"shared data ({SHARED})")
    return SHARED


@pytest.fixture(scope="session")
def torch():
    """torch, for the torch-in, torch-out paths (CI installs it; elsewhere optional)."""
    try:
        import torch as t
    except ImportError:
        _missing("torch (pip install torch)")
    return t


@pytest.fixture(scope="session")
def cli():
    """Runs the `moeplace` binary (MOEPLACE_BIN, else target/release or target/debug)."""
    candidates = [os.environ.get("MOEPLACE_BIN"), ROOT / "target" / "release" / "moeplace",
                  ROOT / "target" / "debug" / "moeplace"]
    exe = next((str(c) for c in candidates if c and pathlib.Path(c).is_file()), None)
    if exe is None:
        _missing("the moeplace binary (cargo build --release -p moeplace-cli)")

    def run(*args: str) -> str:
        r = subprocess.run([exe, *map(str, args)], capture_output=True, text=True)
        assert r.returncode == 0, f"moeplace {' '.join(map(str, args))} failed:\n{r.stderr}"
        return r.stdout

    return run
