"""Stanford AIMI Thyroid Ultrasound Cine-clip dataset as published (stanfordaimi.azurewebsites.net; 192 biopsied
nodules of 167 patients, Stanford University Medical Center).

``nnunet_mtl convert aimi SOURCE`` (aliases ``AIMI``, ``stanford-thyroid``); the options every converter has are in
:mod:`dataset_conversion.options`. Layout::

    SOURCE/dataset.hdf5    ~36 GB; datasets of equal length N, one 2D frame per index:
                           image (N, H, W) uint8, mask (N, H, W) 0/255, annot_id (N,) bytes like b'123_',
                           frame_num (N,) the frame's number within its cine clip
    SOURCE/metadata.csv    one row per clip: annot_id, age, sex, location, size_x, size_y, size_z, ti-rads_level,
                           ti-rads_composition, ti-rads_echogenicity, ti-rads_shape, ti-rads_margin,
                           ti-rads_echogenicfoci, histopath_diagnosis

Policies:

- The HDF5 file is streamed, never loaded: the main process reads only the small ``annot_id`` / ``frame_num``
  arrays, in slices of :data:`INDEX_CHUNK`; the workers read one frame (image + mask) per case through
  :class:`HDF5Frames`, which opens the file lazily in each process. Memory stays flat however large the file.
- ``annot_id`` is decoded and stripped of its trailing underscore(s) on both sides (the HDF5 stores b'123_'; a
  metadata.csv written either way matches). One clip = one annot_id = one patient id: the metadata has no separate
  patient column (two nodules of one patient are two ids, which matters only if the set is split, and by default
  it is an external test set).
- ``--every-kth-frame K`` keeps the 1st, (K+1)th, ... frame of each clip in frame_num order (adjacent cine frames
  are nearly identical).
- ``--target tirads`` (default, matching ThyroidXL's default so AIMI can be its test set): TR1..TR5 from
  ``ti-rads_level``. ``--target malignancy``: ``histopath_diagnosis`` 0 = benign, 1 = malignant (its published
  encoding, as public code reading the file uses it); a diagnosis written as text is read like ThyroidXL's.
- Default ``--as test``: the thyroid paper uses AIMI as the external test set of a ThyroidXL-trained model.
- No pixel size is stored: spacing is left empty (HD95 in pixels). Case ids ``aimi_<annot_id>_f<frame_num:04d>``.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from dataset_conversion.common import Case, CaseStream, Skipped, SkipCase, column_name, find_layout, is_missing, safe_id
from dataset_conversion.driver import add_converter, convert_source
from dataset_conversion.options import ConvertOptions
from dataset_conversion.report import ConversionReport
from dataset_conversion.thyroid_xl import (TARGETS, check_target, histopathology_class, target_classes,
                                           tirads_class)
from nnunet_mtl.errors import NnunetMtlError

HDF5_FILE = "dataset.hdf5"
METADATA_FILE = "metadata.csv"
HDF5_DATASETS = ("image", "mask", "annot_id", "frame_num")
METADATA_COLUMNS = ("annot_id", "ti-rads_level", "histopath_diagnosis")
LAYOUT = (f"{HDF5_FILE} (datasets {', '.join(HDF5_DATASETS)}; one frame per index) and {METADATA_FILE} (annot_id, "
          f"age, sex, ..., ti-rads_level, ..., histopath_diagnosis)")
INDEX_CHUNK = 65536  # annot_id / frame_num entries read at once by the main process
CHUNK_CACHE_BYTES = 32 * 2 ** 20  # per-process HDF5 chunk cache: consecutive frames of a multi-frame chunk hit it
AGE_RANGE = (0, 120)
HISTOPATH_CODES = {0: "benign", 1: "malignant"}


def register_converters(sources) -> None:
    """``convert aimi`` (aliases ``AIMI``, ``stanford-thyroid``)."""
    p = add_converter(
        sources, "aimi", convert_aimi, aliases=["AIMI", "stanford-thyroid"], default_id=606,
        default_name="AIMIThyroid", default_split="test", passed=("target", "every_kth_frame"),
        help="Stanford AIMI thyroid ultrasound cine-clips (HDF5; TI-RADS TR1-TR5 or benign / malignant; "
             "external test set by default)",
        description=f"Converts the Stanford AIMI Thyroid Ultrasound Cine-clip dataset as downloaded (folder with "
                    f"{LAYOUT}). Every frame is a case (--every-kth-frame subsamples); all frames of a clip share "
                    "its annot_id as patient id. The HDF5 file is streamed frame by frame, never loaded whole. No "
                    "pixel size is stored: spacing is left empty. Written as test set by default (the thyroid "
                    "paper's use of AIMI: an external test set).",
        source_help="the folder with dataset.hdf5 and metadata.csv")
    p.add_argument("--target", choices=TARGETS, default="tirads",
                   help="the class: tirads (default; TR1..TR5 from ti-rads_level) or malignancy (benign / malignant "
                        "from histopath_diagnosis 0 / 1)")
    p.add_argument("--every-kth-frame", type=int, default=1, metavar="K",
                   help="keep every K-th frame of each clip, starting with its first (default 1: all frames)")


# --- reading the HDF5 file ------------------------------------------------------------------------------------
class HDF5Frames:
    """The loader: ``case.image`` is (HDF5 file, frame index); returns (image[i], mask[i]) read from the file, which
    each process opens on its first call and keeps open (an open h5py handle cannot be pickled, so ``__getstate__``
    drops it)."""

    def __init__(self):
        self._path = self._file = self._datasets = None

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.__init__()

    def __call__(self, case: Case):
        path, index = case.image
        try:
            if path != self._path:
                import h5py

                self.close()
                self._file = h5py.File(path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES)
                self._datasets = (self._file["image"], self._file["mask"])  # looked up once, not per frame
                self._path = path
            image, mask = self._datasets
            return np.asarray(image[int(index)]), np.asarray(mask[int(index)])
        except (OSError, KeyError, ValueError, IndexError) as e:
            raise SkipCase(f"{case.source}: not readable ({type(e).__name__}: {str(e).splitlines()[0][:100]})")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._path = self._file = self._datasets = None


def annot_key(value) -> str:
    """An annot_id as text without its trailing underscore(s): b'123_' -> '123' (HDF5), '123' -> '123' (csv)."""
    if isinstance(value, (bytes, np.bytes_)):
        value = bytes(value).decode("utf-8", "replace")
    return str(value).strip().rstrip("_").strip()


def _read_index(path: Path) -> tuple[list[str], np.ndarray, tuple]:
    """annot_id (as :func:`annot_key`) and frame_num of every index, read in slices; plus the frame shape."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise NnunetMtlError(f"{path} is not a readable HDF5 file ({str(e).splitlines()[0][:80]}); expected the "
                             f"AIMI {HDF5_FILE}")
    with f:
        absent = [name for name in HDF5_DATASETS if not isinstance(f.get(name), h5py.Dataset)]
        if absent:
            raise NnunetMtlError(f"{path} has no dataset {', '.join(absent)}; expected {LAYOUT}")
        n = f["image"].shape[0] if f["image"].ndim else 0
        lengths = {name: f[name].shape[0] if f[name].ndim else 0 for name in HDF5_DATASETS}
        if len(set(lengths.values())) != 1:
            raise NnunetMtlError(f"{path}: datasets of different lengths ({lengths}); expected one entry per frame "
                                 f"in each")
        if f["image"].ndim not in (3, 4) or f["mask"].ndim not in (3, 4):
            raise NnunetMtlError(f"{path}: image {f['image'].shape} / mask {f['mask'].shape}; expected (N, H, W) "
                                 f"frames")
        annots: list[str] = []
        frames = np.empty(n, dtype=np.int64)
        for start in range(0, n, INDEX_CHUNK):
            stop = min(n, start + INDEX_CHUNK)
            annots.extend(annot_key(a) for a in np.asarray(f["annot_id"][start:stop]).reshape(stop - start, -1)[:, 0])
            try:
                frames[start:stop] = np.asarray(f["frame_num"][start:stop], dtype=np.float64).reshape(stop - start,
                                                                                                       -1)[:, 0]
            except (TypeError, ValueError) as e:
                raise NnunetMtlError(f"{path}: frame_num[{start}:{stop}] is not numeric ({e}); expected frame "
                                     f"numbers")
        return annots, frames, f["image"].shape[1:]


def _read_metadata(path: Path) -> dict[str, dict]:
    """metadata.csv rows by :func:`annot_key` (the first row of an id wins); one-line error if unusable."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            absent = [c for c in METADATA_COLUMNS if c not in header]
            if absent:
                raise NnunetMtlError(f"{path} has no column {', '.join(absent)}; expected {LAYOUT}")
            rows: dict[str, dict] = {}
            for raw in reader:
                row = {(k or "").strip(): (v.strip() if isinstance(v, str) else v) for k, v in raw.items()}
                rows.setdefault(annot_key(row["annot_id"]), row)
            return rows
    except (UnicodeDecodeError, csv.Error) as e:
        raise NnunetMtlError(f"{path} is not a readable csv ({type(e).__name__}); expected the AIMI {METADATA_FILE}")


def _clip_class(annot: str, row: dict, report: ConversionReport, target: str) -> tuple[str | None, str, dict]:
    """(class or None, reason, clinical columns) of one clip; bad values reported once per clip."""
    ref = f"aimi_{safe_id(annot, '-')}"
    clinical: dict = {}
    for header, value in row.items():
        if not header:
            continue
        col = column_name(header)
        if col == "age":
            value = report.number(ref, header, value, low=AGE_RANGE[0], high=AGE_RANGE[1], integer=True)
        elif col in ("size_x", "size_y", "size_z"):
            value = report.number(ref, header, value, low=0)
        clinical[col] = value
    level = row.get("ti-rads_level")
    tirads = tirads_class(level)
    if not is_missing(level) and tirads is None:
        report.bad_value(ref, "ti-rads_level", level, "a TI-RADS level 1-5")
    clinical["ti_rads_level"] = int(tirads[2:]) if tirads else ""
    diagnosis = row.get("histopath_diagnosis")
    if _numeric(diagnosis):  # the published encoding; a non-integer is reported by number()
        code = report.number(ref, "histopath_diagnosis", diagnosis, integer=True)
        malignancy = HISTOPATH_CODES.get(code)
        bad = code is not None and malignancy is None
    else:
        malignancy = histopathology_class(diagnosis)
        bad = not is_missing(diagnosis) and malignancy is None
    if bad:
        report.bad_value(ref, "histopath_diagnosis", diagnosis, "0 (benign), 1 (malignant) or a diagnosis")
    if target == "tirads":
        return tirads, f"ti-rads_level {level!r} in {METADATA_FILE}: expected a TI-RADS level 1-5", clinical
    return malignancy, (f"histopath_diagnosis {diagnosis!r} in {METADATA_FILE}: expected 0 (benign) or 1 "
                        f"(malignant)"), clinical


def _numeric(value) -> bool:
    try:
        float(str(value).strip())
        return True
    except ValueError:
        return False


def _kept_frames(annots: list[str], frames: np.ndarray, every_kth_frame: int) -> np.ndarray:
    """Boolean mask of the indices kept: in each clip, ranks 0, K, 2K, ... in frame_num order."""
    keep = np.zeros(len(annots), dtype=bool)
    if every_kth_frame == 1:
        keep[:] = True
        return keep
    by_clip: dict[str, list[int]] = {}
    for i, a in enumerate(annots):
        by_clip.setdefault(a, []).append(i)
    for indices in by_clip.values():
        ordered = sorted(indices, key=lambda i: (frames[i], i))
        keep[ordered[::every_kth_frame]] = True
    return keep


def aimi_cases(source, report: ConversionReport, *, target: str = "tirads", every_kth_frame: int = 1) -> CaseStream:
    """The :class:`Case` / :class:`Skipped` entries in HDF5 index order (one :class:`Skipped` per clip without a
    usable class), generated while they are converted; ``case.image`` is (HDF5 file, index)."""
    check_target(target)
    if not isinstance(every_kth_frame, int) or every_kth_frame < 1:
        raise NnunetMtlError(f"--every-kth-frame {every_kth_frame!r}: expected a whole number >= 1")
    root = find_layout(source, [HDF5_FILE, METADATA_FILE], dataset="the Stanford AIMI thyroid cine-clip dataset",
                       expected=LAYOUT)
    path = root / HDF5_FILE
    metadata = _read_metadata(root / METADATA_FILE)
    annots, frames, shape = _read_index(path)
    keep = _kept_frames(annots, frames, every_kth_frame)
    clips: dict[str, int] = {}  # clip -> frames kept, in order of appearance
    for a, k in zip(annots, keep):
        clips[a] = clips.get(a, 0) + int(k)
    classes = {}
    for annot in clips:
        row = metadata.get(annot)
        classes[annot] = ((None, f"annot_id {annot!r} has no row in {METADATA_FILE}; its class is unknown", {})
                          if row is None else _clip_class(annot, row, report, target))
    total = sum(1 if classes[a][0] is None else n for a, n in clips.items())
    kept = "all frames kept" if every_kth_frame == 1 else f"every {every_kth_frame}th frame of each clip kept"
    report.note(f"{len(annots)} frames of {len(clips)} clips in {HDF5_FILE} (frames {shape[1]}x{shape[0]} px), read "
                f"frame by frame; {kept} ({int(keep.sum())})")
    report.note("one patient id per clip (annot_id without its trailing '_'): the metadata has no patient column")
    report.note(f"{HDF5_FILE} stores no pixel size: spacing left empty (HD95 in pixels)")
    unused = sorted(set(metadata) - set(clips))
    if unused:
        report.note(f"{len(unused)} {METADATA_FILE} row(s) without frames in {HDF5_FILE} (e.g. annot_id "
                    f"{unused[0]!r})")

    def generate():
        reported: set[str] = set()
        used_ids: set[str] = set()
        for index, (annot, frame_num) in enumerate(zip(annots, frames.tolist())):
            class_name, reason, clinical = classes[annot]
            if class_name is None:
                if annot not in reported:
                    reported.add(annot)
                    yield Skipped(f"aimi_{safe_id(annot, '-')} ({clips[annot]} frames)", reason)
                continue
            if not keep[index]:
                continue
            case_id = f"aimi_{safe_id(annot, '-')}_f{frame_num:04d}"
            source_ref = f"{HDF5_FILE}[{index}] (annot_id {annot}, frame_num {frame_num})"
            if case_id in used_ids:
                yield Skipped(f"{case_id} (index {index})", f"{source_ref}: frame_num repeats within the clip; the "
                                                            f"first frame with it is kept")
                continue
            used_ids.add(case_id)
            yield Case(case_id, class_name, patient_id=annot, image=(str(path), index), clinical={
                **clinical, "frame_num": frame_num, "hdf5_index": index}, source=source_ref)

    return CaseStream(generate(), total)


def convert_aimi(source, options: ConvertOptions, *, target: str = "tirads", every_kth_frame: int = 1,
                 raw_root=None) -> ConversionReport:
    """Convert the AIMI cine-clip dataset; returns the report (``report.path`` is the dataset folder). The cases
    are streamed to the workers (no list of them is built), 16 frames at a time."""
    return convert_source("AIMI", source, lambda report: aimi_cases(source, report, target=target,
                                                                    every_kth_frame=every_kth_frame),
                          options, classes=target_classes(target), raw_root=raw_root, loader=HDF5Frames(),
                          chunksize=16, description=f"Stanford AIMI thyroid ultrasound cine-clips, target {target}, "
                                                    f"every {every_kth_frame}. frame, converted by nnunet_mtl")
