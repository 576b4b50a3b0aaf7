"""What ``pip install .`` puts into site-packages: one package, wstun, and its commands."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from wstun.common import __version__

REPO = Path(__file__).resolve().parent.parent
DIST_INFO = f"wstun-{__version__}.dist-info"


def _source_tree(dest: Path) -> Path:
    """A copy of the files git would commit (tracked or new), without build leftovers."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def _build_wheel(tmp_path: Path) -> Path:
    src = _source_tree(tmp_path / "src")
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "-w", str(dist), str(src)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (wheel,) = dist.glob("wstun-*.whl")
    return wheel


def test_wheel_installs_one_package_and_two_commands(tmp_path: Path) -> None:
    """The wheel holds wstun and its dist-info only; installed, both commands run from it."""
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(f"{DIST_INFO}/entry_points.txt").decode()
    assert {name.split("/")[0] for name in names} == {"wstun", DIST_INFO}
    for part in ("client", "server", "common"):
        assert f"wstun/{part}/py.typed" in names
        for module in (REPO / part).rglob("*.py"):
            # Every module of the folder, subpackages included, is in the wheel.
            assert f"wstun/{module.relative_to(REPO).as_posix()}" in names
    assert "wstun-client = wstun.client.cli:main" in entry_points
    assert "wstun-server = wstun.server.cli:main" in entry_points

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
         str(wheel)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    assert {p.name for p in site.iterdir()} == {"bin", DIST_INFO, "wstun"}
    assert sorted(p.name for p in (site / "wstun").iterdir()) == ["client", "common", "server"]

    # Only the installed copy and the dependencies: no site (so no editable
    # install of the repository), no current directory on the path.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), sysconfig.get_path("purelib")])}
    for module, command in (("wstun.client", "wstun-client"), ("wstun.server", "wstun-server")):
        run = subprocess.run(
            [sys.executable, "-S", "-P", "-m", module, "--version"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        assert run.stdout.strip() == f"{command}, version {__version__}"
    where = subprocess.run(
        [sys.executable, "-S", "-P", "-c", "import wstun.common.relay as m; print(m.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(site)
