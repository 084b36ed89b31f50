"""One install name: the wheel holds `vitshrink` only, without the research scripts; the installed copy
works away from the checkout and nothing writes into it; the product never imports the experiments."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("compressor", "exporters", "benchmarks")  # folders that install as vitshrink.<name>
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv*", "build", "runs", "*.egg-info", "__pycache__", "*.onnx")


def build_wheel(source: Path, out: Path) -> Path:
    """Build a wheel of the checkout `source` from a copy (setuptools' build/ folder never reaches the checkout)."""
    copy = out / "src"
    shutil.copytree(source, copy, ignore=NOT_SOURCES)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                    "-w", str(out), str(copy)], check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed here (it is in the dev extra: pip install -e '.[dev]')")
    return build_wheel(ROOT, tmp_path_factory.mktemp("wheel"))


def test_wheel_installs_one_top_level_name(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"vitshrink", f"vitshrink-{wheel.name.split('-')[1]}.dist-info"}, sorted(top)


def test_wheel_holds_the_product_and_its_gate_files_but_no_experiments(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"vitshrink/{p.relative_to(ROOT).as_posix()}" for pkg in PRODUCT for p in (ROOT / pkg).rglob("*.py")}
    expected |= {f"vitshrink/{p.name}" for p in (ROOT / "vitshrink").glob("*.py")}
    assert expected - names == set(), "modules missing from the wheel: add their package to pyproject's packages"
    gates = {f"vitshrink/benchmarks/gates/{p.name}" for p in (ROOT / "benchmarks" / "gates").iterdir()}
    assert gates and gates <= names
    assert not [n for n in names if "experiments" in n or n.startswith("vitshrink/tests")]
    entry_points = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-py')[0]}.dist-info/entry_points.txt").decode()
    assert "vitshrink = vitshrink.cli:main" in entry_points


def _tree(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


INSTALLED_RUN = """
import pathlib, sys
import timm, torch
from torch.utils.data import DataLoader, TensorDataset
import vitshrink
from vitshrink.benchmarks.gate import DEFAULT_GATES

assert pathlib.Path(vitshrink.__file__).parent == pathlib.Path(sys.argv[1]) / "vitshrink", vitshrink.__file__
assert DEFAULT_GATES.is_file(), DEFAULT_GATES
torch.manual_seed(0)
model = timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=64, depth=4, num_heads=4,
                          num_classes=10)
data = TensorDataset(torch.randn(96, 3, 16, 16), torch.randint(0, 10, (96,)))
loader = DataLoader(data, batch_size=32)
vitshrink.compress(model, loader, loader, reduce="flops=0.3", out="runs/s", epochs=0, progress=False)
vitshrink.export("runs/s", target="onnx")
print("OK")
"""


@pytest.mark.slow
def test_installed_wheel_runs_away_from_the_checkout_and_writes_nothing_into_itself(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--quiet", "--target",
                    str(site), str(wheel)], check=True, capture_output=True, text=True, timeout=300)
    # what landed, the console script's bin/ aside: one package
    assert {p.name for p in site.iterdir() if not p.name.endswith(".dist-info")} - {"bin"} == {"vitshrink"}
    before = _tree(site / "vitshrink")
    work = tmp_path / "work"
    work.mkdir()
    # the checkout must not be importable: only the installed copy (and the environment's dependencies)
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", INSTALLED_RUN, str(site)], cwd=work, env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0 and "OK" in run.stdout, run.stderr[-3000:]
    cli = subprocess.run([sys.executable, "-m", "vitshrink.cli", "info", "runs/s"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0 and "vit_tiny_patch16_224" in cli.stdout, cli.stderr[-2000:]
    assert (work / "runs" / "s" / "model.onnx").is_file()
    assert _tree(site / "vitshrink") == before


PRODUCT_IMPORTS = """
import importlib, pkgutil, sys
from pathlib import Path

class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.startswith("research") or name.split(".")[0] in {
                "compressor", "exporters", "benchmarks", "cli", "torch_pruning"}:
            raise ImportError(f"the product imported {name}")
        return None

sys.meta_path.insert(0, Blocked())
import vitshrink
for pkg in ("compressor", "exporters", "benchmarks"):
    module = importlib.import_module(f"vitshrink.{pkg}")
    for info in pkgutil.walk_packages(module.__path__, f"vitshrink.{pkg}."):
        importlib.import_module(info.name)
importlib.import_module("vitshrink.cli")
print("OK")
"""


def test_product_imports_neither_the_experiments_nor_the_old_top_level_names():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", PRODUCT_IMPORTS, str(ROOT)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-3000:]
