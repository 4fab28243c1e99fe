"""Files for tests and checks of what a command wrote (not a test module): PNG masks written and read, a snapshot of
a folder tree and a bad input refused without a trace in it, a folder made unwritable, and the small synthetic world the
dataset commands run on (and a copy of a world a test may change)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

# ------------------------------------------------------------------------------------------------ PNG masks
def write_png(path, mask) -> None:
    """``mask`` as an 8-bit grey PNG at ``path``."""
    Image.fromarray(np.asarray(mask, np.uint8)).save(path)


def read_png(path) -> np.ndarray:
    """The pixels of the image at ``path`` as stored."""
    with Image.open(path) as img:
        return np.asarray(img)


def square(top, left, size, shape=(32, 32)) -> np.ndarray:
    """A uint8 mask of ``shape``: 1 on the ``size`` x ``size`` square at (``top``, ``left``), 0 elsewhere."""
    m = np.zeros(shape, np.uint8)
    m[top:top + size, left:left + size] = 1
    return m


# ------------------------------------------------------------------------------------------------ what was written
def snapshot(root: Path) -> dict:
    """Every entry under root: folders by name, files by content hash (hidden temporary files too)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = hashlib.sha1(path.read_bytes()).hexdigest()
    return out


def assert_refused(argv: list[str], world: Path, capsys) -> str:
    """``nnunet_mtl ARGV`` (in this process) refused as bad input: exit code 2, one line ``nnunet_mtl COMMAND:
    error: ...`` without a traceback, and nothing under ``world`` written, changed or removed (not even a temporary
    file); the line."""
    from nnunet_mtl.cli.main import main
    capsys.readouterr()  # what the setup printed
    before = snapshot(world)
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, f"exit {code}: {err}"
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"nnunet_mtl {argv[0]}: error: ") and "Traceback" not in err, err
    assert snapshot(world) == before  # nothing written, changed, removed or left half-written
    return err


def deny_writes(monkeypatch, folder: Path) -> None:
    """os.access says `folder` is not writable (the tests may run as root, for whom chmod does not bite)."""
    import nnunet_mtl.outputs as outputs
    real = os.access

    def access(path, mode, *a, **k):
        if mode & os.W_OK and Path(os.path.abspath(path)) == folder:
            return False
        return real(path, mode, *a, **k)
    monkeypatch.setattr(outputs.os, "access", access)


# ------------------------------------------------------------------------------------------------ a world
def phantom_world(root: Path, dataset_id: int) -> Path:
    """``root`` with the nnUNet_raw, nnUNet_preprocessed and nnUNet_results folders, nnUNet_raw holding
    Dataset<dataset_id>_Src: a tiny fully annotated synthetic phantom (convert_synthetic) of 16 patients x 2 images of
    32 px, normal fraction 0.125, malignant fraction 0.5, a quarter of the patients in test. Returns ``root``."""
    from dataset_conversion.synthetic import convert_synthetic
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (root / var).mkdir()
    convert_synthetic(dataset_id, "Src", num_patients=16, images_per_patient=2, size=(32, 32), normal_fraction=0.125,
                      malignant_fraction=0.5, test_fraction=0.25, raw_root=root / "nnUNet_raw", progress=False)
    return root


def world_copy(template: Path, tmp_path: Path, monkeypatch) -> Path:
    """A copy of the folder ``template`` at ``tmp_path/w``, with nnUNet_raw, nnUNet_preprocessed and nnUNet_results
    pointing at its folders of those names: a world a test may change."""
    import shutil
    root = tmp_path / "w"
    shutil.copytree(template, root)
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(var, str(root / var))
    return root
