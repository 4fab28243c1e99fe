"""The conversion driver: ``nnunet_mtl convert NAME`` (:func:`add_converter`), :func:`convert_source` and
:func:`convert` with its worker pool. How a converter uses it: :mod:`dataset_conversion`.

:func:`convert` (called by :func:`convert_source`) loads, converts and PNG-encodes the cases in worker processes,
keeps the bookkeeping (cases.csv rows, duplicates, counts) in the main process in the source's order, and
publishes the dataset atomically through :class:`~nnunet_mtl.dataset.writer.RawDatasetWriter` together with
``conversion_report.json`` (:mod:`dataset_conversion.report`).

Policies (documented here once, for every converter)

- ``--normal exclude`` (default): images without a lesion are left out and reported. The task is lesion
  segmentation + lesion classification (benign / malignant, TI-RADS, ...): a normal image has no lesion to
  classify, and a third class with a handful of examples (BrEaST has 4 of 256) cannot be learnt and skews the
  classifier. ``--normal include`` keeps them (all-zero mask) under an extra class ``normal``; the class list then
  always has ``normal`` (also for a dataset without normal images), so datasets converted with the same
  ``--normal`` share class_labels and can be combined with ``--add-to-existing``.
- Exact duplicates (identical decoded grey pixels, whatever the file bytes): the first occurrence in the
  source's order is kept and later copies are skipped and reported. If the copies carry *different* classes
  (BUSI files one image as both benign and malignant), every copy is dropped: the label is ambiguous, training on
  it teaches both answers and a test case with two truths cannot be scored. A new case identical to a case of the
  existing dataset (``--add-to-existing``) is skipped: a test image that is also a training image is leakage.
  ``--duplicates keep`` keeps every copy within the source, as published (to test on a paper's count; copies of
  the existing dataset are still skipped), and lists them in the report.
- Exact duplicates filed under two patient ids are one person (BUS-UCLM's CHCO_000-003 are CHVI_005, 008, 009,
  013): the later-seen patient's kept images get the earlier patient's id, so a patient-grouped split keeps the
  person in one fold, and the report lists each merge with the identical pairs that prove it.
- ``--resize SIZE``: every image (bilinear) and mask (nearest) becomes SIZE x SIZE, as a paper's fixed input size
  (nnU-Net never resizes 2D PNGs); the spacing columns are scaled with it, and a lesion that vanishes is skipped.
- Near-duplicates (difference hashes at most :data:`~dataset_conversion.duplicates.NEAR_DUPLICATE_MAX_BITS` of 64
  bits apart) between cases of *different* patients are listed in the report, never removed: they are often the
  same lesion seen twice (a patient id the dataset does not publish), which a patient-level split cannot see.
  Pairs within one patient (cine frames, repeat views) are expected and not listed. All pairs are counted; the
  report lists the first :data:`~dataset_conversion.duplicates.REPORT_LIST_LIMIT` (cine frames of one scanner hash
  alike: ~150,000 pairs per 2,000 frames).
- Label conflicts: near-duplicates (the same rule: dHash, different patients) whose *classes* differ. BUSI files
  one scan under both classes with different crops and outlines (dHash distance 0, so not an exact duplicate):
  the same image with two truths, like the exact copies dropped as ambiguous. They are counted and listed in their
  own section of the report. ``--label-conflicts keep`` (default) keeps them, as near-duplicates are kept: the
  8-bit rule also pairs unrelated images that share a scanner's layout (cine frames of different clips hash
  alike by the thousand), so removing every pair by default would remove valid images; the report says they are
  kept and how to drop them. ``--label-conflicts drop`` drops every case of the conversion that is in a conflict
  (all of them, not only the pairs listed); a case already in the dataset (``--add-to-existing``) is never
  changed, so of such a pair only the new case is dropped.
- A problem with one case's files (missing, unreadable, image and mask of different sizes, a lesion case with an
  empty mask) skips that case with a one-line reason naming the file; a problem with the dataset as a whole
  (wrong folder, unreadable spreadsheet, missing column) stops the run. Bad clinical values are reported, never
  fatal; the cell is left empty in cases.csv.
"""
from __future__ import annotations

import argparse
import signal
import time
from collections import deque
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from dataset_conversion.common import Case, CaseStream, Skipped, SkipCase, UniqueNames, check_same_size, load_files
from dataset_conversion.duplicates import Duplicates, difference_hash, pixel_digest
from dataset_conversion.options import ConvertOptions, add_common_arguments, class_labels_for, options_from_args
from dataset_conversion.report import REPORT_FILE, ConversionReport, write_report
from nnunet_mtl.errors import NnunetMtlError


# --- the worker side ----------------------------------------------------------------------------------------
@dataclass
class WrittenCase:
    """What a worker sends back for a written case (the pixels stay in the files): the hashes
    :class:`~dataset_conversion.duplicates.Duplicates` compares, the sizes and how the masks were read."""
    digest: str
    dhash: int
    shape: tuple
    source_shape: tuple = ()  # before --resize
    encodings: tuple = ()     # how each mask file was read (nnunet_mtl.dataset.writer.MASK_ENCODINGS)


def resize_case(grey: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Image bilinear, mask nearest-neighbour, both to size x size (a lesion smaller than a pixel of the result may
    vanish: the caller checks the mask again)."""
    from PIL import Image
    image = np.asarray(Image.fromarray(grey).resize((size, size), Image.BILINEAR))
    label = np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
    return image, label


_WORKER: dict = {}


def _init_worker(loader: Callable, folder: str, resize: int | None = None) -> None:
    # Ctrl-C reaches every process of the terminal's group: workers ignore it and the main process, which owns the
    # temporary folder, stops them and cleans up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER.update(loader=loader, folder=Path(folder), resize=resize)


def _convert_case(case: Case, split: str, loader: Callable, folder: Path, resize: int | None = None):
    """Load -> grey image + 0/1 mask -> checks -> (resize) -> PNGs into ``folder``; a :class:`SkipCase` comes back
    as text."""
    from nnunet_mtl.dataset.writer import MaskEncodingError, image_and_mask, write_case_files

    try:
        image, mask = loader(case)
        name = case.source or case.case_id
        masks = [] if mask is None else list(mask) if isinstance(mask, (list, tuple)) else [mask]
        files = [m for m in case.masks if isinstance(m, (str, Path))]
        names = [str(m) for m in files] if len(files) == len(masks) else []
        for i, m in enumerate(masks):
            check_same_size(np.asarray(image), np.asarray(m), name, names[i] if names else "its mask")
        try:
            grey, label, encodings = image_and_mask(image, mask, name=name, mask_names=names)
        except MaskEncodingError as e:
            raise SkipCase(str(e))
        source_shape = grey.shape
        if resize is not None:
            had_lesion = bool(label.any())
            grey, label = resize_case(grey, label, resize)
            if had_lesion and not label.any():
                raise SkipCase(f"{case.source or case.case_id}: the lesion vanishes when {source_shape[1]}x"
                               f"{source_shape[0]} is resized to {resize}x{resize}; expected a larger lesion or "
                               f"--resize")
        if case.lesion and not label.any():
            raise SkipCase(f"{case.source or case.case_id}: the lesion mask is empty; expected a lesion "
                           f"(class {case.class_name})")
        if not case.lesion and label.any():
            raise SkipCase(f"{case.source or case.case_id}: a normal image with a non-empty mask; expected none")
        write_case_files(folder, case.case_id, split, grey, label)
        return WrittenCase(pixel_digest(grey), difference_hash(grey), grey.shape, source_shape, encodings)
    except SkipCase as e:
        return str(e)


def _convert_chunk(chunk: list) -> list:
    return [_convert_case(case, split, _WORKER["loader"], _WORKER["folder"], _WORKER.get("resize"))
            for case, split in chunk]


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _ordered_results(work: Iterator, loader: Callable, folder: Path, num_processes: int, chunksize: int,
                     resize: int | None = None):
    """(work item, result) in the order of ``work``; at most ``2 * num_processes`` chunks in flight, so memory
    stays flat however long the source is."""
    if num_processes <= 1:
        for case, split in work:
            yield (case, split), _convert_case(case, split, loader, folder, resize)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # forkserver: workers start from a clean single-threaded server (no fork of a threaded parent), cheaper than
    # spawn; spawn where it does not exist.
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    executor = ProcessPoolExecutor(num_processes, mp_context=multiprocessing.get_context(method),
                                   initializer=_init_worker, initargs=(loader, str(folder), resize))
    pending: deque = deque()
    chunks = _chunks(work, chunksize)
    try:
        for chunk in chunks:
            pending.append((chunk, executor.submit(_convert_chunk, chunk)))
            if len(pending) >= 2 * num_processes:
                break
        while pending:
            chunk, future = pending.popleft()
            try:
                results = future.result()
            except BrokenProcessPool as e:
                raise NnunetMtlError(
                    f"a worker process died ({e}); out of memory, or a Python script that starts the conversion "
                    f"without `if __name__ == '__main__':` (workers import the main module); rerun with -j 1") from e
            nxt = next(chunks, None)
            if nxt is not None:
                pending.append((nxt, executor.submit(_convert_chunk, nxt)))
            yield from zip(chunk, results)
    finally:
        # on any error or Ctrl-C: drop queued chunks and wait for the running ones, so no worker writes into the
        # temporary folder after the writer removed it
        executor.shutdown(wait=True, cancel_futures=True)


# --- the main side ---------------------------------------------------------------------------------------
def convert(cases: Iterable[Case | Skipped], options: ConvertOptions, report: ConversionReport, *,
            class_labels: dict[str, int], description: str = "", loader: Callable = load_files,
            total: int | None = None, raw_root=None, chunksize: int = 4) -> Path:
    """Convert ``cases`` into ``nnUNet_raw/DatasetNNN_Name`` (atomically) and fill ``report``; returns the folder.

    Normal images are dropped or kept per ``options.normal``; duplicates as in the module docstring
    (:class:`~dataset_conversion.duplicates.Duplicates`). Cases reach the workers in chunks of ``chunksize`` (fewer
    round trips for small frames)."""
    from tqdm import tqdm

    from nnunet_mtl.dataset.writer import RawDatasetWriter, summarize_cases

    started = time.perf_counter()
    if total is None and hasattr(cases, "__len__"):
        total = len(cases)
    report.options = {k: v for k, v in asdict(options).items() if k not in ("progress",)}
    writer = RawDatasetWriter(options.dataset_id, options.name, class_labels, raw_root=raw_root,
                              description=description, overwrite=options.overwrite,
                              add_to_existing=options.add_to_existing)
    report.dataset = writer.folder_name
    dups = Duplicates(writer, report, keep=options.duplicates == "keep")
    added: list[dict] = []  # this run's rows
    encodings: dict[str, tuple] = {}  # case id -> how each of its mask files was read
    with writer, tqdm(total=total, desc=report.converter, unit="img", disable=not options.progress) as bar:
        dups.load_existing()
        rows: dict[str, dict] = {}
        # case ids become file names: two that differ only in letter case are one file on macOS / Windows
        ids = UniqueNames(report.source, "case id (ids that differ only in letter case are one file name on "
                                         "macOS and Windows)")

        def work() -> Iterator[tuple[Case, str]]:
            """Cases to convert, with their split; skips and normal images handled here, in the main process."""
            for item in cases:
                if isinstance(item, Skipped):
                    report.skip(item.case, item.reason)
                    bar.update(1)
                    continue
                if not item.lesion and options.normal == "exclude":
                    report.skip(item.case_id, "normal image (no lesion) excluded; --normal include keeps it")
                    bar.update(1)
                    continue
                split = item.split if options.split == "official" else options.split
                if split is None:
                    raise NnunetMtlError(f"case {item.case_id}: --as official but the converter gave no split")
                ids.add(item.case_id, item.source or item.case_id, f"case id {item.case_id.casefold()!r}")
                # validated before a worker writes a file named after it
                rows[item.case_id] = writer.check_case(
                    item.case_id, split=split, class_name=item.class_name, patient_id=item.patient_id,
                    spacing_mm=item.spacing_mm, **item.clinical)
                yield item, split

        # closing(): the workers are stopped before the writer removes its temporary folder on an error
        from nnunet_mtl.resources import capped
        processes, capping = capped(options.num_processes, "-j", total, what="images")
        if capping:
            report.note(capping)
        with closing(_ordered_results(work(), loader, writer.tmp, processes, chunksize,
                                      options.resize)) as results:
            for (case, split), result in results:
                bar.update(1)
                row = rows.pop(case.case_id)
                if isinstance(result, str):
                    report.skip(case.case_id, result)
                elif dups.admit(case, split, result):
                    encodings[case.case_id] = result.encodings
                    if options.resize is not None:
                        _scale_spacing(row, result.source_shape, result.shape)
                    writer.register_case(row)
                    added.append(row)
        if options.resize is not None:
            report.note(f"every image resized to {options.resize}x{options.resize} (bilinear; masks nearest), "
                        f"spacing scaled with it: masks, Dice and HD95 are at that size")
        dups.merge_patients()
        dups.near_duplicates(options.label_conflicts)
        kept = writer.case_ids
        added = [r for r in added if r["case_id"] in kept]  # minus copies dropped as ambiguous or conflicting later
        for row in added:
            for encoding in encodings[row["case_id"]]:
                report.mask_encodings[encoding] = report.mask_encodings.get(encoding, 0) + 1
        if not added:
            first = report.skipped[0]["reason"] if report.skipped else "the source lists no cases"
            conflicts = (f", {len(report.label_conflicts_dropped)} dropped as label conflicts"
                         if report.label_conflicts_dropped else "")
            raise NnunetMtlError(f"{report.source}: no case could be converted ({len(report.skipped)} skipped"
                                 f"{conflicts}; first: {first})")
        report.summary = writer.summary()
        report.added = summarize_cases([(r["split"], r["class"]) for r in added], writer.class_labels)
        report.seconds = time.perf_counter() - started
        write_report(writer.tmp / REPORT_FILE, report)
    report.path = writer.path
    return writer.path


def _scale_spacing(row: dict, source_shape: tuple, shape: tuple) -> None:
    """A resized case's pixel size: the published one times the source size over the new size, per axis."""
    for column, before, after in (("spacing_row_mm", source_shape[0], shape[0]),
                                  ("spacing_col_mm", source_shape[1], shape[1])):
        if row.get(column):
            row[column] = repr(float(row[column]) * before / after)


# --- the driver -------------------------------------------------------------------------------------------------
def add_converter(sources, name: str, convert_fn: Callable[..., ConversionReport], *, aliases: Sequence[str] = (),
                  help: str, description: str, source_help: str, default_id: int, default_name: str,
                  default_split: str = "train", passed: Sequence[str] = ()) -> argparse.ArgumentParser:
    """Add ``nnunet_mtl convert NAME SOURCE`` (and its ``aliases``) with :func:`add_common_arguments`; returns the
    parser, for the dataset's own options. Running the command calls ``convert_fn(args.source,
    options_from_args(args), **{opt: args.opt for opt in passed})`` and prints the report."""
    p = sources.add_parser(name, aliases=list(aliases), help=help, description=description)
    p.add_argument("source", type=Path, help=source_help)
    add_common_arguments(p, default_id, default_name, default_split=default_split)

    def run(args) -> int:
        report = convert_fn(args.source, options_from_args(args), **{k: getattr(args, k) for k in passed})
        print(report.format())
        return 0

    p.set_defaults(func=run)
    return p


def convert_source(converter: str, source, cases: Callable[[ConversionReport], Iterable], options: ConvertOptions,
                   *, classes: Sequence[str], description: str, raw_root=None, loader: Callable = load_files,
                   chunksize: int = 4) -> ConversionReport:
    """Convert the dataset at ``source`` into ``nnUNet_raw/DatasetNNN_Name``; returns the report
    (``report.path`` is the dataset folder).

    ``converter`` names it in the report; ``cases(report)`` yields its :class:`Case` / :class:`Skipped` entries
    (listed first for the progress bar's total, a few thousand small records, unless it returns a
    :class:`CaseStream`); ``classes`` are the target classes (+ ``normal`` with ``--normal include``);
    ``loader`` reads a case in the workers (a ``close()`` it has is called at the end); ``chunksize`` cases travel
    to a worker at once (more for small frames). ``raw_root`` None: $nnUNet_raw, resolved before any work so that
    its one-line error comes first."""
    from nnunet_mtl.paths import raw_root as env_raw_root

    root = Path(raw_root) if raw_root is not None else env_raw_root()
    class_labels = class_labels_for(classes, options.normal)
    report = ConversionReport(converter, source)
    listed = cases(report)
    if not isinstance(listed, CaseStream):
        listed = list(listed)
    try:
        convert(listed, options, report, class_labels=class_labels, raw_root=root, description=description,
                loader=loader, chunksize=chunksize)
    finally:
        if hasattr(loader, "close"):
            loader.close()
    return report
