#!/usr/bin/env bash
# The GPU check: what a lent GPU machine should measure first, in at most 8 minutes on one data-centre GPU.
#
#   benchmarks/device_check.sh OUT [--raw RAW | --data DATA] [--train-minutes M] [--work DIR] [--keep-work]
#   benchmarks/device_check.sh OUT --cpu-smoke       # tiny everything on the CPU (CI runs it, so it does not rot)
#   benchmarks/device_check.sh --prepare-raw DATA RAW  # on any machine: BrEaST and UDIAT converted at 256 x 256
#
# 1. CUDA step ratios with AMP, each benchmark's trainers interleaved on one batch of a phantom planned by nnU-Net
#    (planned once, shared): MTL / nnU-Net; RLAR / MTL at each layer (bottleneck, last, mid, last3: one process, a
#    summary section each); BI-RADS / MTL;
#    LesionAware / MTL; PCGrad and UPGrad / MTL; then MTL / nnU-Net again with torch.compile (nnUNet_compile=1).
# 2. BrEaST -> UDIAT at 256 x 256: nnUNetTrainerMTL, nnUNetTrainerSegOnly and nnUNetTrainerBIRADS, each training cut
#    by a wall-clock budget (nnUNet_mtl_max_train_minutes, default 0.75 min), predicted on UDIAT, evaluated and
#    compared, through the recipe benchmarks/device_check_breast.toml (nnunet_mtl recipe run).
#    The sources (../shared/data: BrEaST 69 MB, UDIAT 21 MB) are larger than what travels to a device machine
#    (64 MiB), so convert them here first (--prepare-raw, a few MB of 256 x 256 PNGs) and carry that folder (--raw).
#
# Everything is written under OUT: device_check.log (all output), summary.md (the numbers), breast_report.md and
# breast_report.json (the recipe's report); the work folder (phantom, datasets, models) is OUT/work unless --work,
# and is removed at the end unless --keep-work. --cpu-smoke: the CPU, a 64 px phantom, one timed step each, the RLAR
# layers bottleneck and last3 only, and the breast part replaced by the same recipe machinery on a synthetic phantom
# with the _tiny trainers.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null || PY=python3
BIN="$(dirname "$(command -v "$PY")")"

die() { echo "device_check: error: $*" >&2; exit 2; }

if [[ "${1:-}" == "--prepare-raw" ]]; then
    [[ $# -eq 3 ]] || die "usage: device_check.sh --prepare-raw DATA RAW (DATA holds BrEaST/ and UDIAT_DatasetB/)"
    DATA="$2"; RAW="$3"
    [[ -d "$DATA/BrEaST" && -d "$DATA/UDIAT_DatasetB" ]] || die "$DATA: expected BrEaST/ and UDIAT_DatasetB/ in it"
    [[ ! -e "$RAW" ]] || die "$RAW exists; expected a new folder"
    mkdir -p "$RAW"
    export nnUNet_raw="$RAW"
    "$BIN/nnunet_mtl" convert breast "$DATA/BrEaST" -d 641 --name BrEaST256 --resize 256 --no-progress
    "$BIN/nnunet_mtl" convert udiat "$DATA/UDIAT_DatasetB" -d 642 --name UDIAT256 --as test --resize 256 --no-progress
    du -sh "$RAW"
    exit 0
fi

[[ $# -ge 1 && "$1" != -* ]] || die "usage: device_check.sh OUT [--cpu-smoke] [--raw RAW | --data DATA] [--train-minutes M] [--work DIR] [--keep-work]"
OUT="$1"; shift
SMOKE=0; RAW=""; DATA=""; MINUTES="0.75"; WORK=""; KEEP=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --cpu-smoke) SMOKE=1 ;;
        --raw) RAW="$2"; shift ;;
        --data) DATA="$2"; shift ;;
        --train-minutes) MINUTES="$2"; shift ;;
        --work) WORK="$2"; shift ;;
        --keep-work) KEEP=1 ;;
        *) die "unknown option $1" ;;
    esac
    shift
done
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
WORK="${WORK:-$OUT/work}"
mkdir -p "$WORK"
LOG="$OUT/device_check.log"
SUMMARY="$OUT/summary.md"
: > "$LOG"
START=$(date +%s)
say() { echo "[device_check $(( $(date +%s) - START )) s] $*" | tee -a "$LOG"; }

if [[ $SMOKE -eq 1 ]]; then
    # two RLAR layers of four: one layer and several (bench_rlar_step.py treats every layer alike); each is a
    # trainer built and stepped, about 25 s on 2 CPU cores
    DEVICE=cpu; SIZE=64; STEPS=(--steps 1 --warmup 0); TOML="$HERE/device_check_smoke.toml"; LAYERS=bottleneck,last3
else
    DEVICE=cuda; SIZE=128; STEPS=(--steps 10 --warmup 3); TOML="$HERE/device_check_breast.toml"
    LAYERS=bottleneck,last,mid,last3
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
        || die "no CUDA device; on a CPU use --cpu-smoke"
    if [[ -z "$RAW" && -z "$DATA" ]]; then die "the breast part needs --raw RAW (from --prepare-raw) or --data DATA"; fi
fi
export NNUNET_MTL_BENCH_PHANTOM="$WORK/phantom" PYTHONUNBUFFERED=1

{
    echo "# device check ($([[ $SMOKE -eq 1 ]] && echo 'CPU smoke: tiny, the numbers mean nothing' || echo GPU))"
    echo
    echo '```'
    "$PY" - <<'EOF'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}")
import nnunetv2, nnunet_mtl
from importlib.metadata import version
print(f"nnunetv2 {version('nnunetv2')}, nnunet_mtl {nnunet_mtl.__version__}")
EOF
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    echo '```'
} > "$SUMMARY" 2>>"$LOG"

section() {  # section TITLE OUTPUT: a benchmark's result lines under ## TITLE in the summary
    { echo; echo "## $1"; echo; echo '```'; echo "$2" | grep -E "^device |ms/step|^ratio|same gradients" || true
      echo '```'; } >> "$SUMMARY"
}

bench() {  # bench TITLE SCRIPT ARGS...: its output into the log, its result lines into the summary
    local title="$1"; shift
    say "$title"
    local out
    out="$("$PY" "$HERE/$1" "${@:2}" 2>>"$LOG")" || { echo "$out" >> "$LOG"; say "FAILED: $title"; return 1; }
    echo "$out" >> "$LOG"
    section "$title" "$out"
}

say "part 1: step ratios on $DEVICE (phantom $SIZE px, planned once into $NNUNET_MTL_BENCH_PHANTOM)"
bench "MTL / nnU-Net" bench_train_step.py --device "$DEVICE" --size "$SIZE" "${STEPS[@]}"
# the RLAR layers of $LAYERS in one process (one start, one MTL trainer; at least two, so that each block has its
# "--- layer" header): each layer's block is its own summary section
say "RLAR / MTL at ${LAYERS//,/, }"
out="$("$PY" "$HERE/bench_rlar_step.py" --device "$DEVICE" --size "$SIZE" --layer "$LAYERS" \
    "${STEPS[@]}" 2>>"$LOG")" || { echo "$out" >> "$LOG"; say "FAILED: RLAR / MTL"; exit 1; }
echo "$out" >> "$LOG"
for layer in ${LAYERS//,/ }; do
    section "RLAR / MTL at $layer" "$(echo "$out" | awk -v layer="$layer" '/^--- layer /{on = ($3 == layer); next} on')"
done
bench "BI-RADS / MTL" bench_birads_step.py --device "$DEVICE" --size "$SIZE" "${STEPS[@]}"
bench "LesionAware / MTL" bench_lesion_aware_step.py --device "$DEVICE" --size "$SIZE" "${STEPS[@]}"
bench "PCGrad and UPGrad / MTL" bench_baselines_step.py --device "$DEVICE" --size "$SIZE" "${STEPS[@]}" \
    --trainers nnUNetTrainerMTL_PCGrad,nnUNetTrainerMTL_UPGrad
if [[ $SMOKE -eq 0 ]]; then  # torch.compile exists for CUDA only in nnU-Net (its trainer refuses it on the CPU)
    nnUNet_compile=1 bench "MTL / nnU-Net with torch.compile" bench_train_step.py --device "$DEVICE" \
        --size "$SIZE" --steps 10 --warmup 5
fi

say "part 2: $(basename "$TOML") (training budget $MINUTES min each on $DEVICE)"
RECIPE_WORK="$WORK/recipe"
DATA_ARGS=()
if [[ $SMOKE -eq 0 ]]; then
    if [[ -n "$RAW" ]]; then  # converted here beforehand: the recipe finds the datasets and skips its conversions
        mkdir -p "$RECIPE_WORK/nnUNet_raw"
        cp -r "$RAW"/Dataset641_* "$RAW"/Dataset642_* "$RECIPE_WORK/nnUNet_raw/"
        DATA_ARGS=(--data "BrEaST=$RAW" --data "UDIAT=$RAW")
    else
        DATA_ARGS=(--data "BrEaST=$DATA/BrEaST" --data "UDIAT=$DATA/UDIAT_DatasetB")
    fi
fi
export nnUNet_mtl_max_train_minutes="$MINUTES"
NP=(); [[ $SMOKE -eq 1 ]] && NP=(-np 1)  # the smoke: one worker per step (nnU-Net's pools spawn, each imports torch)
if "$BIN/nnunet_mtl" recipe run "$TOML" --workdir "$RECIPE_WORK" -device "$DEVICE" "${NP[@]}" "${DATA_ARGS[@]}" \
        >>"$LOG" 2>&1; then
    "$BIN/nnunet_mtl" recipe report "$TOML" --workdir "$RECIPE_WORK" -o "$WORK/report" >>"$LOG" 2>&1
    cp "$WORK/report/report.md" "$OUT/breast_report.md"
    [[ -f "$WORK/report/report.json" ]] && cp "$WORK/report/report.json" "$OUT/breast_report.json"
    { echo; echo "## $(basename "$TOML" .toml)"; echo; cat "$WORK/report/report.md"; } >> "$SUMMARY"
    say "recipe done"
else
    say "FAILED: the recipe (see $LOG)"
    exit 1
fi
unset nnUNet_mtl_max_train_minutes

say "done in $(( $(date +%s) - START )) s; summary: $SUMMARY"
echo "total: $(( $(date +%s) - START )) s" >> "$SUMMARY"
if [[ $KEEP -eq 0 ]]; then rm -rf "$WORK"; fi
