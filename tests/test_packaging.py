"""The presets and the embedded pipelines are package data: a wheel carries them, and an install from it runs the
README's command from any directory. User presets and pipelines still load from a path."""

import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import yaml

import streamgen
from streamgen.cache.presets import load_preset
from streamgen.resources import (
    default_pipeline, find_pipeline, pipeline_names, pipeline_path, preset_dir, preset_names, preset_path,
)
from streamgen.video_io import read_video

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(streamgen.__file__).parent


def test_the_shipped_files_live_inside_the_package():
    assert preset_dir() == PACKAGE / "presets"
    assert preset_names() == sorted(p.stem for p in (PACKAGE / "presets").glob("*.yaml"))
    assert {"rolling", "self-forcing", "global", "streamgen"} <= set(preset_names())
    assert preset_path("rolling") == PACKAGE / "presets" / "rolling.yaml"
    assert pipeline_names() == ["shapeworld-cam-tiny", "shapeworld-tiny", "tiny-random", "wan2.1-1.3b"]
    assert pipeline_names(with_weights=True) == ["shapeworld-cam-tiny", "shapeworld-tiny", "tiny-random"]
    assert default_pipeline() == pipeline_path("shapeworld-tiny") == PACKAGE / "pipelines" / "shapeworld-tiny"


def test_unknown_names_list_what_ships():
    with pytest.raises(ValueError, match=r"unknown cache preset 'nope'; shipped: anchor-forcing, .*rolling"):
        preset_path("nope")
    with pytest.raises(ValueError, match=r"unknown shipped pipeline 'nope'; shipped: shapeworld-cam-tiny, "
                       r"shapeworld-tiny, tiny-random"):
        pipeline_path("nope")


def test_user_presets_and_pipelines_still_load_from_a_path(tmp_path, monkeypatch):
    mine = tmp_path / "my-window.yaml"
    mine.write_text(yaml.safe_dump({"name": "my-window", "regions": [{"name": "window", "frames": 6, "evict": True}]}))
    assert load_preset(str(mine)).name == "my-window"
    folder = tmp_path / "tiny-random"  # a user's folder wins over the shipped pipeline of the same name
    shutil.copytree(pipeline_path("tiny-random"), folder)
    monkeypatch.chdir(tmp_path)
    assert find_pipeline("tiny-random") == Path("tiny-random")
    assert find_pipeline(str(folder)) == folder
    assert find_pipeline("elsewhere/tiny-random") == Path("elsewhere/tiny-random")  # a path is never a name
    assert find_pipeline("./tiny-random") == Path("tiny-random")
    with pytest.raises(ValueError, match=r"'mine' is neither a folder nor a shipped pipeline; shipped: shapeworld"):
        find_pipeline("mine")
    assert find_pipeline(None) == default_pipeline()


def _build_wheel(out: Path) -> Path:
    """The wheel of the package's own files (not the checkout's build/ folder, which may hold stale modules)."""
    src = out / "src"
    shutil.copytree(REPO / "streamgen", src / "streamgen", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO / name, src / name)
    # Offline with the installed setuptools (torch requires one) when it meets pyproject's setuptools>=68; else pip
    # builds in isolation, fetching setuptools from the index.
    try:
        offline = int(version("setuptools").split(".")[0]) >= 68
    except PackageNotFoundError:
        offline = False
    flags = ["--no-build-isolation"] if offline else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *flags, "-w", str(out), str(src)],
                   check=True, capture_output=True)
    return next(out.glob("streamgen-*.whl"))


def test_a_wheel_runs_info_and_generate_from_outside_the_checkout(tmp_path):
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in [*(f"streamgen/presets/{p.name}" for p in (PACKAGE / "presets").glob("*.yaml")),
                    *(f"streamgen/{p.relative_to(PACKAGE).as_posix()}"
                      for p in (PACKAGE / "pipelines").rglob("*") if p.is_file())]:
        assert shipped in names, shipped

    target, work = tmp_path / "site", tmp_path / "elsewhere"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    # PYTHONPATH comes before site-packages, where the checkout's editable finder lives: the wheel's copy is imported.
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}

    def run(*args):
        result = subprocess.run([sys.executable, *args], cwd=work, env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result

    where = run("-c", "import streamgen.resources as r; print(r.__file__); print(r.default_pipeline())").stdout.split()
    assert all(Path(p).is_relative_to(target) for p in where), where
    info = run("-m", "streamgen.cli", "info")
    assert f"pipeline                   {target / 'streamgen' / 'pipelines' / 'shapeworld-tiny'}" in info.stdout
    generated = run("-m", "streamgen.cli", "generate", "--prompt", "a red circle drifting left over a blue backdrop",
                    "--frames", "6", "--out", "x.mp4")
    assert "Loading" not in info.stderr + generated.stderr  # no loading bars without -v
    assert read_video(work / "x.mp4").shape == (6, 32, 32, 3)
