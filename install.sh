#!/usr/bin/env bash
# Installs nnunet_mtl and everything it needs into the active Python environment (a venv or conda env).
#   python3 -m venv .venv && . .venv/bin/activate && bash install.sh
# Handles three known traps (see README, "Installation notes"):
#  - nnunetv2 pulls timm -> torchvision, whose newest release pins the newest torch: an installed torch (say a
#    CUDA build you chose) is kept by constraining pip to its version.
#  - nnU-Net's trainer lookup imports every trainer module of nnunetv2, one of which imports timm, which imports
#    torchvision: a torchvision that does not load against the installed torch (e.g. PyPI's torchvision next to a
#    CPU-only torch) breaks nnUNetv2_train for every trainer outside nnunetv2. We check it at the end.
#  - pyradiomics 3.0.1 only builds on Python 3.11 / numpy 2 without build isolation.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null || PY=python3

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
if torch_version="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null)"; then
    echo "install.sh: keeping the installed torch ${torch_version}"
    echo "torch==${torch_version}" > "$constraints"
fi

echo "install.sh: [1/3] build tools for pyradiomics"
"$PY" -m pip install -q -c "$constraints" numpy setuptools wheel versioneer
echo "install.sh: [2/3] pyradiomics 3.0.1 (built without isolation: its release does not build in isolation)"
"$PY" -m pip install -q -c "$constraints" --no-build-isolation "pyradiomics==3.0.1"
echo "install.sh: [3/3] nnunet_mtl, nnU-Net and the rest"
"$PY" -m pip install -q -c "$constraints" -e ".[test]"

"$PY" -c "import nnunetv2, radiomics, nnunet_mtl" || { echo "install.sh: import check failed" >&2; exit 1; }
if ! "$PY" -c "import torchvision" >/dev/null 2>&1; then
    echo "install.sh: error: torchvision does not load with the installed torch; nnU-Net's trainer lookup needs it" \
         "(through timm). Install a matching pair, e.g.: $PY -m pip install --upgrade torch torchvision" >&2
    exit 1
fi
trainer_dir="$("$PY" -c 'from nnunet_mtl.paths import ext_trainer_dir; print(ext_trainer_dir())')"
cat <<MSG
install.sh: done.
For nnU-Net's own commands (nnUNetv2_train / nnUNetv2_predict) to find our trainers, set once (e.g. in ~/.bashrc):
    export nnUNet_extTrainer="${trainer_dir}"
MSG
