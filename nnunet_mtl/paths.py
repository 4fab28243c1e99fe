"""nnU-Net's folder conventions (nnUNet_raw / nnUNet_preprocessed / nnUNet_results), read at call time.

nnunetv2.paths reads the environment once, at import; commands of ours that set these variables for a child
process (the demo, the tests) therefore read them here, when they are needed.
"""
from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from nnunet_mtl.errors import NnunetMtlError

ENV_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
EXT_TRAINER_VAR = "nnUNet_extTrainer"


def env_folder(var: str) -> Path:
    """The folder named by nnU-Net environment variable ``var``; a clear error when it is not set."""
    value = os.environ.get(var)
    if not value:
        raise NnunetMtlError(
            f"environment variable {var} is not set; nnU-Net needs nnUNet_raw, nnUNet_preprocessed and "
            f"nnUNet_results (e.g. export {var}=/data/{var})")
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise NnunetMtlError(f"{var}={value} is a file; expected the folder of nnU-Net's {var.split('_')[1]} datasets")
    return path


def raw_root() -> Path:
    return env_folder("nnUNet_raw")


def preprocessed_root() -> Path:
    return env_folder("nnUNet_preprocessed")


def results_root() -> Path:
    return env_folder("nnUNet_results")


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """nnU-Net's folder name for a dataset: Dataset001_Name."""
    if not 0 < int(dataset_id) < 1000:
        raise NnunetMtlError(f"dataset id {dataset_id} is out of range; nnU-Net expects an integer from 1 to 999")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", name):
        raise NnunetMtlError(f"dataset name {name!r} is not usable; expected letters, digits, '_' or '-'")
    return f"Dataset{int(dataset_id):03d}_{name}"


def parse_dataset_id(dataset: str | int) -> int:
    """Accept 500, '500', '5' or 'Dataset500_Name' like nnU-Net does."""
    text = str(dataset)
    match = re.fullmatch(r"(?:Dataset)?(\d{1,3})(?:_.*)?", text)
    if not match:
        raise NnunetMtlError(f"dataset {text!r} is neither a dataset id (e.g. 500) nor a name like Dataset500_X")
    return int(match.group(1))


def find_dataset_folder(dataset: str | int, root: Path) -> Path:
    """The folder ``root/DatasetNNN_*`` for a dataset id or name; a clear error if missing or ambiguous."""
    dataset_id = parse_dataset_id(dataset)
    if not root.is_dir():
        raise NnunetMtlError(f"{root} does not exist; expected the folder of nnU-Net datasets")
    matches = sorted(p for p in root.glob(f"Dataset{dataset_id:03d}_*") if p.is_dir())
    if not matches:
        raise NnunetMtlError(f"no dataset with id {dataset_id} in {root}; "
                             f"expected a folder Dataset{dataset_id:03d}_<Name>")
    if len(matches) > 1:
        raise NnunetMtlError(
            f"dataset id {dataset_id} is ambiguous in {root}: {', '.join(p.name for p in matches)}")
    return matches[0]


def ext_trainer_dir() -> Path:
    """The folder to put in nnUNet_extTrainer so that nnUNetv2_train / nnUNetv2_predict find our trainers."""
    return Path(__file__).resolve().parent / "ext_trainers"


def ext_trainer_is_configured() -> bool:
    value = os.environ.get(EXT_TRAINER_VAR, "")
    wanted = ext_trainer_dir()
    return any(p and Path(p).resolve() == wanted for p in value.split(os.pathsep))


def env_with_ext_trainer(env: dict | None = None) -> dict:
    """A copy of ``env`` (default: os.environ) with our trainer folder added to nnUNet_extTrainer."""
    env = dict(os.environ if env is None else env)
    parts = [p for p in env.get(EXT_TRAINER_VAR, "").split(os.pathsep) if p]
    wanted = str(ext_trainer_dir())
    if wanted not in parts:
        parts.insert(0, wanted)
    env[EXT_TRAINER_VAR] = os.pathsep.join(parts)
    return env


def command_env(workdir: Path, device: str, processes: int = 2) -> dict:
    """The environment of the commands a demo or a recipe runs in ``workdir``: nnU-Net's three folders under it, our
    trainers for nnU-Net's lookup, unbuffered output (progress shows at once, also in a log file), and worker
    counts that suit the machine unless the user set them (``processes`` each on a CPU; a GPU's augmentation is
    fed by 6)."""
    env = env_with_ext_trainer()
    env.update({var: str(Path(workdir) / var) for var in ENV_VARS}, PYTHONUNBUFFERED="1")
    env.setdefault("nnUNet_def_n_proc", str(processes))
    env.setdefault("nnUNet_n_proc_DA", str(processes) if device == "cpu" else "6")
    return env


def venv_command(name: str) -> str:
    """Our or nnU-Net's command ``name`` from this Python's environment when it is there (the same command the
    user's PATH finds once the environment is active), else the bare name."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def ext_trainer_hint() -> str:
    return (f'export {EXT_TRAINER_VAR}="{ext_trainer_dir()}"   '
            f'# or: export {EXT_TRAINER_VAR}="$(nnunet_mtl trainer-dir)"')
