"""The repository installs as a package: a wheel built from it imports and scores from another folder."""

import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO


@pytest.mark.integration
def test_a_wheel_imports_finetune_and_loads_its_metrics_from_another_folder(tmp_path):
    """Built without the network (this venv's setuptools), installed into a folder of its own, used from a third:
    the package, its abcjs assets and its local `evaluate` modules come from the wheel, not the checkout."""
    wheels, target, elsewhere, source = (tmp_path / name for name in ("wheels", "site", "elsewhere", "source"))
    elsewhere.mkdir()
    # a copy of what the build reads, so that setuptools' build/ and egg-info land there, not in the checkout
    shutil.copytree(REPO / "finetune", source / "finetune", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source)],
                   check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("abc_finetune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "finetune/evaluation/modules/loops/loops.py" in names and "finetune/assets/abcjs-basic-min.js" in names
    assert not any(name.startswith(("tests/", "benchmarks/", "recipes/")) for name in names)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    script = (
        "import finetune, finetune.evaluation.report as report\n"
        "from finetune.evaluation.token_metrics import load_metric\n"
        "print(finetune.__file__)\n"
        "print(report.ASSETS.is_dir())\n"
        "print(load_metric('loops').compute(predictions=['M:2/4\\nK:D\\n' + 'ABcd efga|' * 5])['loops'])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    path, assets, loops = result.stdout.split()
    assert path.startswith(str(target)) and assets == "True" and float(loops) == 1.0
