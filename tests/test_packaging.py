"""A regular (non-editable) install works without the checkout: the wheel carries the shipped
specs and recipes, and the demo runs from another directory."""

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).parents[1]


def test_the_package_list_covers_every_package_folder():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "sslpipe").rglob("__init__.py")}
    assert listed == folders | {"sslpipe.pipelines", "sslpipe.recipes"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv holding only the wheel of this checkout (its dependencies come from this one's
    site-packages, added by path: the editable install of sslpipe there is not seen)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    for part in ("sslpipe", "pipelines", "recipes"):
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source / part)
    run = dict(capture_output=True, text=True, timeout=600)
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp / "dist"),
            str(source),
        ],
        **run,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("sslpipe-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, **run)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            **run,
        ).stdout.strip()
    )
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)], **run
    )
    assert done.returncode == 0, done.stderr[-3000:]
    shutil.rmtree(source)  # nothing of the checkout is left to read but the wheel's files
    return python, site, tmp


def test_a_wheel_install_loads_every_shipped_spec_and_recipe(installed):
    python, site, tmp = installed
    code = (
        "import sslpipe, sslpipe.pipeline.spec as s, sslpipe.train.config as c, sslpipe.files as f;"
        "print(sslpipe.__file__);"
        "names = sorted(s.shipped_specs()); [s.load_spec(n) for n in names]; print(names);"
        "recipes = sorted(p.stem for p in f.shipped_folder('recipes').glob('*.yaml'));"
        "[c.load_config(r) for r in recipes];"
        "import sslpipe.pretext.permutations as p; assert p.SHIPPED.is_file(), p.SHIPPED; print(recipes)"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, cwd=tmp, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    where, specs, recipes = done.stdout.splitlines()[-3:]
    assert where.startswith(str(site))  # the wheel's sslpipe, not the checkout's
    assert specs == str(sorted(p.stem for p in (ROOT / "pipelines").glob("*.yaml")))
    assert recipes == str(sorted(p.stem for p in (ROOT / "recipes").glob("*.yaml")))


def test_the_quick_demo_runs_from_a_wheel_install_in_another_directory(installed):
    python, site, tmp = installed
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [str(python), "-m", "sslpipe", "demo", "--quick", "--workers", "1"],
        capture_output=True,
        text=True,
        cwd=elsewhere,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "demo finished" in done.stdout
    assert (elsewhere / "demo-out" / "shards" / "train.manifest.json").is_file()
    assert (elsewhere / "demo-out" / "summary.png").is_file()
