"""Packaging (issue 13): the sdist and wheel that ``python -m build`` makes, installed into fresh
virtualenvs and run from there.

Builds use this environment's setuptools and Cython (``--no-isolation``) and the wheel is built
from the sdist, as ``python -m build`` does; they run in a copy of the checkout's tracked files
(as they are in the working tree), so setup.py's products (``hyco_proto.egg-info/``,
``hyco_proto/_frames.c``) never land in the checkout. The fresh virtualenvs get the runtime
dependencies from ``build/wheelhouse`` (``make setup`` fills it), so nothing here uses the
network. The installed package runs tests/smoke_installed.py: ``hyco emulator``, ``hyco
listen`` and ``hyco send`` from the virtualenv's own entry point, in a directory outside the
source tree.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WHEELHOUSE = ROOT / "build" / "wheelhouse"
SMOKE = ROOT / "tests" / "smoke_installed.py"
BUILD_TIMEOUT = 300.0
RUN_TIMEOUT = 120.0
# Variables that choose or demand a kernel, or point Python at the source tree: each case sets
# its own.
_OURS = ("HYCO_PROTO_NO_EXTENSIONS", "HYCO_PROTO_REQUIRE_EXTENSION", "HYCO_PROTO_BUILD_EXTENSION",
         "PYTHONPATH", "PYTHONHOME", "CC")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _OURS}
    # Reproducible pip: no user or site configuration (index, find-links), no version check.
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.update(extra)
    return env


def _run(argv: list[str | Path], *, timeout: float, cwd: Path | None = None,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env if env is not None else _env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


def _ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"{done.args} failed:\n{done.stdout}\n{done.stderr}"
    return done


def _tracked_files() -> list[str] | None:
    """The checkout's tracked files (``git ls-files``), or None without git or a repository."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                                timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [name for name in listed.decode("utf-8", "surrogateescape").split("\0") if name]


# Without git: what a plain copy of the checkout leaves out (environments, build products).
_UNTRACKED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "site", "node_modules",
                                   "__pycache__", "*.so", "*.pyd", "*.egg-info")


def _copy_checkout(dest: Path) -> Path:
    """``dest`` filled with the checkout's tracked files as they are in the working tree
    (uncommitted edits included, unlike ``git archive HEAD``)."""
    names = _tracked_files()
    if names is None:
        shutil.copytree(ROOT, dest, ignore=_UNTRACKED, dirs_exist_ok=True)
        return dest
    for name in names:
        source = ROOT / name
        if not source.is_file():  # deleted in the working tree, not yet committed
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest / name)
    return dest


@dataclass
class Dists:
    checkout: Path  # the tracked files the sdist was built from
    sdist: Path
    wheel: Path  # built from the sdist with HYCO_PROTO_BUILD_EXTENSION=yes
    source: Path  # the sdist, unpacked


@pytest.fixture(scope="session")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    checkout = _copy_checkout(tmp_path_factory.mktemp("checkout"))
    out = tmp_path_factory.mktemp("dist")
    _ok(_run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, checkout],
             cwd=checkout, env=_env(HYCO_PROTO_BUILD_EXTENSION="yes"), timeout=BUILD_TIMEOUT))
    (sdist,) = out.glob("hyco_proto-*.tar.gz")
    (wheel,) = out.glob("hyco_proto-*.whl")
    unpacked = tmp_path_factory.mktemp("sdist")
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):  # Python 3.10.12+: refuse unsafe members
            tar.extractall(unpacked, filter="data")
        else:  # pragma: no cover
            tar.extractall(unpacked)
    (source,) = unpacked.iterdir()
    return Dists(checkout, sdist, wheel, source)


def _build_wheel(dists: Dists, workdir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m build --wheel`` in a fresh copy of the unpacked sdist, into ``workdir/out``."""
    source = workdir / "src"
    shutil.copytree(dists.source, source)
    return _run([sys.executable, "-m", "build", "--no-isolation", "--wheel", "--outdir",
                 workdir / "out", source], env=_env(**env), timeout=BUILD_TIMEOUT)


@pytest.fixture(scope="session")
def no_compiler_wheel(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from the sdist where the C compiler fails (``CC=false``) and
    HYCO_PROTO_BUILD_EXTENSION is unset: what ``pip install`` does where no wheel fits."""
    workdir = tmp_path_factory.mktemp("nocc")
    done = _ok(_build_wheel(dists, workdir, CC="false"))
    assert 'building extension "hyco_proto._frames" failed' in done.stdout + done.stderr
    (wheel,) = (workdir / "out").glob("hyco_proto-*.whl")
    return wheel


def _venv(path: Path, wheel: Path) -> Path:
    """A fresh virtualenv at ``path`` with ``wheel`` and its dependencies (offline); its Python."""
    if not (WHEELHOUSE / "requirements.txt").exists():
        pytest.fail(f"{WHEELHOUSE} is missing: run `make setup` (it downloads the runtime "
                    "dependencies as wheels)")
    _ok(_run([sys.executable, "-m", "venv", "--without-pip", path], timeout=RUN_TIMEOUT))
    python = path / ("Scripts" if os.name == "nt" else "bin") / "python"
    _ok(_run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-index",
              "--find-links", WHEELHOUSE, wheel], timeout=RUN_TIMEOUT))
    return python


@pytest.fixture(scope="session")
def wheel_python(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _venv(tmp_path_factory.mktemp("venv") / "env", dists.wheel)


def _smoke(python: Path, cwd: Path, expect: str, **env: str) -> str:
    done = _ok(_run([python, SMOKE, "--expect", expect, "--outside", ROOT], cwd=cwd,
                    env=_env(**env), timeout=RUN_TIMEOUT))
    assert "smoke test passed" in done.stdout
    return done.stdout


def _hyco_version(python: Path, cwd: Path, **env: str) -> str:
    hyco = python.parent / ("hyco.exe" if os.name == "nt" else "hyco")
    return _ok(_run([hyco, "--version"], cwd=cwd, env=_env(**env), timeout=RUN_TIMEOUT)).stdout


def _package_files(dists: Dists) -> set[str]:
    """The package's files in the checkout the dists were built from (``hyco_proto/...``)."""
    files = {p.relative_to(dists.checkout).as_posix()
             for p in (dists.checkout / "hyco_proto").rglob("*")
             if p.suffix in (".py", ".pyi", ".pyx", ".typed") and "__pycache__" not in p.parts}
    assert "hyco_proto/service/webview_page.py" in files  # a subpackage's module is among them
    return files


def test_sdist_has_the_sources_and_no_build_products(dists: Dists) -> None:
    with tarfile.open(dists.sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for needed in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE",
                   "hyco_proto/_frames.pyx", "hyco_proto/_frames.pyi", "hyco_proto/_frames_py.py",
                   "hyco_proto/py.typed", "hyco_proto/cli.py", "tests/smoke_installed.py",
                   "docs/emulator.md"):
        assert needed in names, needed
    junk = [n for n in names if n.endswith((".so", ".pyd", ".c", ".o", ".pyc"))]
    assert junk == []
    assert [n for n in names if n.startswith("tests/")] == ["tests/smoke_installed.py"]
    # Every file of the package (modules, stubs, the Cython source, py.typed) is in the sdist.
    assert _package_files(dists) - names == set()


def test_wheel_has_the_extension_typing_files_and_metadata(dists: Dists) -> None:
    assert not dists.wheel.name.endswith("-none-any.whl")  # a platform wheel: it has _frames
    with zipfile.ZipFile(dists.wheel) as whl:
        names = set(whl.namelist())
        (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(whl.read(metadata_name).decode())
        entry_points = whl.read(metadata_name.replace("METADATA", "entry_points.txt")).decode()
    assert any(n.startswith("hyco_proto/_frames.") and n.endswith((".so", ".pyd")) for n in names)
    for needed in ("hyco_proto/py.typed", "hyco_proto/_frames.pyi", "hyco_proto/_frames_py.py",
                   "hyco_proto/frames.py", "hyco_proto/cli.py", "hyco_proto/testing.py"):
        assert needed in names, needed
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert _package_files(dists) - names == set()  # every module and stub, subpackages too
    assert not [n for n in names if n.startswith("tests/") or n.endswith(".c")]

    assert metadata["Name"] == "hyco_proto"
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Requires-Python"] == ">=3.10"
    assert {"gevent", "webpubsub", "testing", "asgi", "test"} <= set(
        metadata.get_all("Provides-Extra") or [])
    classifiers = set(metadata.get_all("Classifier") or [])
    for needed in ("Typing :: Typed", "Framework :: AsyncIO", "Operating System :: OS Independent",
                   "Programming Language :: Cython", "Topic :: Internet",
                   *(f"Programming Language :: Python :: 3.{minor}" for minor in (10, 11, 12, 13))):
        assert needed in classifiers, needed
    urls = metadata.get_all("Project-URL") or []
    assert urls and all("https://learn.microsoft.com/" in url for url in urls)
    requires = metadata.get_all("Requires-Dist") or []
    assert any(r.startswith("h11") for r in requires)
    assert any(r.startswith("wsproto") for r in requires)
    assert "hyco = hyco_proto.cli:main" in entry_points
    assert "hyco_proto = hyco_proto.testing" in entry_points


def test_installed_wheel_relays_with_the_compiled_kernel(wheel_python: Path,
                                                         tmp_path: Path) -> None:
    out = _smoke(wheel_python, tmp_path, "cython", HYCO_PROTO_REQUIRE_EXTENSION="1")
    assert "frames cython (compiled extension)" in out
    assert "message relayed" in out


def test_installed_wheel_honours_no_extensions(wheel_python: Path, tmp_path: Path) -> None:
    version = _hyco_version(wheel_python, tmp_path, HYCO_PROTO_NO_EXTENSIONS="1")
    assert "frames: python (HYCO_PROTO_NO_EXTENSIONS is set)" in version
    _smoke(wheel_python, tmp_path, "python", HYCO_PROTO_NO_EXTENSIONS="1")


def test_no_compiler_install_falls_back_to_pure_python_and_says_so(
        no_compiler_wheel: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(no_compiler_wheel) as whl:
        assert not [n for n in whl.namelist() if n.endswith((".so", ".pyd"))]
    python = _venv(tmp_path / "env", no_compiler_wheel)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    version = _hyco_version(python, cwd)
    assert version.startswith("hyco ")
    assert "frames: python (pure-Python fallback; slower)" in version
    out = _smoke(python, cwd, "python")
    assert "message relayed" in out
    # CI's guard still catches a missing extension in such an install.
    done = _run([python, "-c", "import hyco_proto.frames"], cwd=cwd,
                env=_env(HYCO_PROTO_REQUIRE_EXTENSION="1"), timeout=RUN_TIMEOUT)
    assert done.returncode != 0 and "HYCO_PROTO_REQUIRE_EXTENSION is set" in done.stderr


def test_required_extension_without_a_compiler_fails_the_build(dists: Dists,
                                                               tmp_path: Path) -> None:
    done = _build_wheel(dists, tmp_path, CC="false", HYCO_PROTO_BUILD_EXTENSION="yes")
    assert done.returncode != 0
    assert "false" in done.stdout + done.stderr  # the compiler command is what failed
    assert list((tmp_path / "out").glob("*.whl")) == []
