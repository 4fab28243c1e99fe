"""Ensembles of prediction folders: nnU-Net's masks, plus the mean of the class probabilities.

The masks are nnUNetv2_ensemble's, computed by its own code: for every case
``nnunetv2.ensembling.ensemble.merge_files`` averages the folders' ``CASE.npz`` probabilities (float32, plain mean),
takes the label manager's arg max and writes the mask with the plans' image writer and the first folder's
``CASE.pkl`` properties, exactly as ``ensemble_folders`` (what nnUNetv2_ensemble runs) calls it: the same dataset.json
and plans.json (the first folder's), the same reader/writer, the same label manager. Only the loop around it is ours:
everything is checked first, the files are written into a hidden staging folder inside the output folder and moved
into place when all cases are done (an error or Ctrl-C leaves the output folder as it was), and progress is printed.

The class probabilities (``class_predictions.csv``) are averaged the same way: per case, the plain mean over the
folders, ``predicted_class`` its arg max, written with the predictor's conventions (6 decimals, one row per case,
sorted by case id). There are no weights: nnU-Net's ensemble has none, and masks and classes stay one consistent
average.

Every folder must hold the same cases: the same ``CASE.npz`` + ``CASE.pkl`` (from ``--save_probabilities``), the same
masks and the same class_predictions.csv rows. A folder written by ``nnunet_mtl predict --per-fold`` stands for its
``ensemble/`` subfolder (its fold ensemble); pass ``PER_FOLD/fold_K`` to use one fold's model instead.
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nnunet_mtl.atomic import temporary_name
from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.inference.class_predictions import (CLASS_PREDICTIONS, folder_class_csvs, prediction_row,
                                                     prob_columns, read_class_tables,
                                                     write_class_prediction_rows)
from nnunet_mtl.inference.per_fold import ENSEMBLE_SUBFOLDER, PER_FOLD_FILE, per_fold_layout

ENSEMBLE_INFO = "ensemble.json"
_SAVE_PROBABILITIES = ("expected a folder predicted with --save_probabilities (nnunet_mtl predict ... "
                       "--save_probabilities, or nnUNetv2_predict --save_probabilities), whose CASE.npz "
                       "probabilities nnUNetv2_ensemble averages")


@dataclass
class PredictionFolder:
    """One input of an ensemble, read and checked (see :func:`scan_prediction_folder`)."""
    given: str                     # as named on the command line
    folder: Path                   # the folder whose files are ensembled (a per-fold folder's ensemble/)
    per_fold: dict | None          # per_fold.json's content (or {}) when ``given`` is a per-fold folder
    dataset_json: dict
    plans: dict
    file_ending: str
    masks: set = field(default_factory=set)
    npz: set = field(default_factory=set)
    pkl: set = field(default_factory=set)
    csv_paths: list = field(default_factory=list)   # class_predictions.csv, or its -num_parts parts; [] for none
    class_names: list | None = None
    class_probabilities: dict = field(default_factory=dict)  # case id -> probabilities (class_names order)

    def describe(self) -> str:
        if self.per_fold is None:
            return str(self.folder)
        folds = (self.per_fold.get("subfolders", {}).get("ensemble", {}).get("folds")
                 or self.per_fold.get("folds"))
        trainer = self.per_fold.get("trainer")
        return (f"{self.folder} (the fold ensemble of per-fold folder {self.given}"
                f"{': folds ' + ', '.join(map(str, folds)) if folds else ''}{', ' + trainer if trainer else ''})")

    def info(self) -> dict:
        """What ensemble.json records about this input."""
        per_fold = self.per_fold or {}
        args_path = self.folder / "predict_from_raw_data_args.json"
        predicted_from = None
        if args_path.is_file():
            with contextlib.suppress(ValueError, OSError):
                predicted_from = json.loads(args_path.read_text()).get("list_of_lists_or_source_folder")
        return {
            "given": self.given, "folder": str(self.folder.resolve()),
            "per_fold_folder": str(Path(self.given).resolve()) if self.per_fold is not None else None,
            "dataset": per_fold.get("dataset") or self.plans.get("dataset_name"),
            "plans": per_fold.get("plans") or self.plans.get("plans_name"),
            "trainer": per_fold.get("trainer"), "configuration": per_fold.get("configuration"),
            "folds": (per_fold.get("subfolders", {}).get("ensemble", {}).get("folds") or per_fold.get("folds")),
            "checkpoint": per_fold.get("checkpoint"),
            "predicted_with": (per_fold.get("subfolders", {}).get("ensemble", {}).get("command")
                               or per_fold.get("command")),
            "predicted_from": predicted_from,
            "class_predictions": [str(p.resolve()) for p in self.csv_paths] or None,
        }


# ----------------------------------------------------------------------------------------------- one folder
def resolve_input(given) -> tuple[Path, dict | None]:
    """The folder to ensemble for ``given``: itself, or the ensemble/ of a per-fold folder (with per_fold.json's
    content, {} when the layout was recognized by its subfolder names)."""
    path = Path(given)
    if not path.exists():
        raise NnunetMtlError(f"input folder {path} does not exist; expected a folder written by nnunet_mtl predict "
                             f"--save_probabilities")
    if not path.is_dir():
        raise NnunetMtlError(f"input {path} is a file; expected a prediction folder (CASE.npz, CASE.pkl, masks, "
                             f"class_predictions.csv)")
    layout = per_fold_layout(path)
    if layout is None:
        return path, None
    if layout.get("ensemble") is None or not (path / ENSEMBLE_SUBFOLDER).is_dir():
        raise NnunetMtlError(f"{path} is a per-fold folder ({PER_FOLD_FILE}, fold_K/) without an {ENSEMBLE_SUBFOLDER}/ "
                             f"subfolder; expected its {ENSEMBLE_SUBFOLDER}/ (predict --per-fold writes it), or name "
                             f"one fold's folder ({path}/fold_K) as the input")
    return path / ENSEMBLE_SUBFOLDER, layout.get("info") or {}


def _json_of(folder: Path, name: str, what: str) -> dict:
    from nnunet_mtl.dataset.contract import read_json_object
    return read_json_object(folder / name, f"the {name} that nnU-Net's prediction copies into its output folder "
                                           f"({what})")


def scan_prediction_folder(given) -> PredictionFolder:
    """Read one input: its cases (CASE.npz, CASE.pkl, masks), dataset.json, plans.json and class predictions.
    Refused with one line when it has no .npz probabilities (predicted without --save_probabilities)."""
    folder, per_fold = resolve_input(given)
    files = [p for p in folder.iterdir() if p.is_file()]
    npz = {p.name[:-4] for p in files if p.name.endswith(".npz")}
    if not npz:
        where = f" ({folder} is the fold ensemble of per-fold folder {given})" if per_fold is not None else ""
        raise NnunetMtlError(f"{folder} has no CASE.npz segmentation probabilities{where}; {_SAVE_PROBABILITIES}")
    dataset_json = _json_of(folder, "dataset.json", "labels, file_ending")
    plans = _json_of(folder, "plans.json", "the image reader/writer, the label manager")
    file_ending = dataset_json.get("file_ending")
    if not isinstance(file_ending, str) or not file_ending or not isinstance(dataset_json.get("labels"), dict):
        raise NnunetMtlError(f"{folder / 'dataset.json'} has no 'labels' object or no 'file_ending'; expected the "
                             f"dataset.json nnU-Net's prediction copies into its output folder")
    item = PredictionFolder(given=str(given), folder=folder, per_fold=per_fold, dataset_json=dataset_json,
                            plans=plans, file_ending=file_ending, npz=npz,
                            pkl={p.name[:-4] for p in files if p.name.endswith(".pkl")},
                            masks={p.name[:-len(file_ending)] for p in files if p.name.endswith(file_ending)})
    item.csv_paths = folder_class_csvs(folder)
    if item.csv_paths:
        item.class_names, item.class_probabilities = read_class_tables(item.csv_paths)
    return item


# ----------------------------------------------------------------------------------------------- agreement
def check_compatible(items: list[PredictionFolder]) -> None:
    """The folders segment the same labels, into the same file format, and classify into the same classes (the
    same prob_<class> columns in the same order), or none has class predictions."""
    first = items[0]
    for item in items[1:]:
        for key in ("labels", "regions_class_order"):
            if item.dataset_json.get(key) != first.dataset_json.get(key):
                raise NnunetMtlError(f"{item.folder / 'dataset.json'} has {key} {item.dataset_json.get(key)}, "
                                     f"{first.folder / 'dataset.json'} has {first.dataset_json.get(key)}; expected "
                                     f"predictions of the same segmentation labels")
        if item.file_ending != first.file_ending:
            raise NnunetMtlError(f"{item.folder / 'dataset.json'} has file_ending {item.file_ending}, "
                                 f"{first.folder / 'dataset.json'} has {first.file_ending}; expected masks of one "
                                 f"format")
    with_csv = [i for i in items if i.csv_paths]
    if with_csv and len(with_csv) != len(items):
        missing = next(i for i in items if not i.csv_paths)
        raise NnunetMtlError(f"{missing.folder} has no {CLASS_PREDICTIONS}, {with_csv[0].folder} has one; expected "
                             f"class predictions in every folder (predicted with nnunet_mtl predict) or in none")
    for item in with_csv[1:]:
        if item.class_names != with_csv[0].class_names:
            raise NnunetMtlError(f"{item.csv_paths[0]} has columns {prob_columns(item.class_names)}, "
                                 f"{with_csv[0].csv_paths[0]} has {prob_columns(with_csv[0].class_names)}; "
                                 f"expected the same prob_<class> columns in the same order (models of the same "
                                 f"classes)")


def check_same_cases(items: list[PredictionFolder]) -> list[str]:
    """Every folder holds every case of the ensemble: CASE.npz, CASE.pkl, the mask CASE<file_ending> and a
    class_predictions.csv row (where the folders have class predictions). Returns the sorted case ids; the first
    case missing somewhere is one line naming the case, the folder and the file missing there."""
    def kinds(item):
        """(the file or row of a case in this folder, as a phrase; the cases that have it)"""
        out = [(lambda c, d=item.folder: f"{d / (c + '.npz')}", item.npz),
               (lambda c, d=item.folder: f"{d / (c + '.pkl')}", item.pkl),
               (lambda c, d=item.folder, e=item.file_ending: f"{d / (c + e)}", item.masks)]
        if item.csv_paths:
            where = str(item.csv_paths[0]) if len(item.csv_paths) == 1 else \
                f"{item.folder / 'class_predictions_part*.csv'}"
            out.append((lambda c, w=where: f"row in {w}", set(item.class_probabilities)))
        return out

    every = set()
    for item in items:
        for _, cases in kinds(item):
            every |= cases
    for item in items:
        for k, (what, cases) in enumerate(kinds(item)):
            missing = sorted(every - cases)
            if not missing:
                continue
            case = missing[0]
            # where the case is: the same kind of file in another folder, else any file of it
            others = [o for o in items if o is not item]
            found = next((w(case) for o in others for w, c in kinds(o)[k:k + 1] if case in c), None) or \
                next(w(case) for o in others + [item] for w, c in kinds(o) if case in c)
            more = f" ({len(missing)} cases lack it there)" if len(missing) > 1 else ""
            hint = " (predicted partly without --save_probabilities?)" if k == 0 and case in item.masks else ""
            found = f"a {found}" if found.startswith("row in ") else found
            raise NnunetMtlError(f"case {case} has no {what(case)}{more}{hint}, but there is {found}; expected every "
                                 f"input folder to hold the same cases (CASE.npz, CASE.pkl, masks, "
                                 f"class_predictions.csv rows)")
    return sorted(every)


def npz_probabilities_shape(path: Path) -> tuple:
    """The shape of the 'probabilities' array of an nnU-Net .npz, from its header (nothing is decompressed beyond
    it); a file that is not one is one line."""
    try:
        with zipfile.ZipFile(path) as z:
            if "probabilities.npy" not in z.namelist():
                raise NnunetMtlError(f"{path} has no 'probabilities' array ({', '.join(n[:-4] for n in z.namelist())}"
                                     f"); expected the .npz nnU-Net writes with --save_probabilities")
            with z.open("probabilities.npy") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, _fortran, _dtype = read(f)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise NnunetMtlError(f"{path} is not a readable .npz ({type(e).__name__}); expected the .npz nnU-Net writes "
                             f"with --save_probabilities") from None
    return tuple(shape)


def check_probability_shapes(items: list[PredictionFolder], cases: list[str]) -> None:
    """Per case, the folders' probabilities have one shape (else numpy would broadcast, or fail mid-run)."""
    for case in cases:
        first = None
        for item in items:
            shape = npz_probabilities_shape(item.folder / f"{case}.npz")
            if first is None:
                first = (item, shape)
            elif shape != first[1]:
                raise NnunetMtlError(f"{item.folder / (case + '.npz')} holds probabilities of shape {shape}, "
                                     f"{first[0].folder / (case + '.npz')} of shape {first[1]}; expected "
                                     f"predictions of the same images with the same labels")


# ----------------------------------------------------------------------------------------------- classes
def average_class_predictions(csv_paths) -> tuple[list[str], list[dict]]:
    """The case-by-case mean of several predictions' class probabilities.

    ``csv_paths``: one item per prediction, a class_predictions.csv (or a list of the -num_parts parts of one).
    Every item must have the same prob_<class> columns in the same order and the same cases. Returns (class names,
    rows sorted by case id: case_id, predicted_class = the arg max of the mean, prob_<class> with 6 decimals)."""
    csv_paths = list(csv_paths)
    tables = [read_class_tables([p] if isinstance(p, (str, os.PathLike)) else list(p)) for p in csv_paths]
    if not tables:
        raise NnunetMtlError("no class predictions to average; expected at least one class_predictions.csv")
    names = tables[0][0]
    for (these, _), path in zip(tables[1:], csv_paths[1:]):
        if these != names:
            raise NnunetMtlError(f"{path} has columns {prob_columns(these)}, {csv_paths[0]} has {prob_columns(names)}; "
                                 f"expected the same prob_<class> columns in the same order")
    cases = set(tables[0][1])
    for (_, probs), path in zip(tables, csv_paths):
        if set(probs) != cases:
            case = sorted(cases ^ set(probs))[0]
            where = path if case not in probs else csv_paths[0]
            raise NnunetMtlError(f"case {case} has no row in {where}; expected every class_predictions.csv to hold "
                                 f"the same cases")
    return names, mean_class_rows(names, [probs for _, probs in tables])


def mean_class_rows(names: list[str], tables: list[dict]) -> list[dict]:
    """Rows of the mean of ``tables`` ({case: probabilities}, same cases), formatted as the predictor writes them."""
    rows = []
    for case in sorted(tables[0]):
        mean = np.mean([np.asarray(t[case], dtype=np.float64) for t in tables], axis=0)
        rows.append(prediction_row(case, names, mean))
    return rows


# ----------------------------------------------------------------------------------------------- the plan
@dataclass
class EnsemblePlan:
    items: list[PredictionFolder]
    output: Path
    cases: list[str]
    save_npz: bool
    class_names: list[str] | None
    class_rows: list[dict] | None


def check_output(output: Path, items: list[PredictionFolder], cases: list[str], save_npz: bool,
                 with_classes: bool) -> None:
    """What the ensemble writes into ``output`` can be written, and nothing there would be left beside it from
    another prediction (masks, .npz or rows of other cases; .npz of these cases without --save_npz)."""
    for item in items:
        if output.exists() and item.folder.resolve() == output.resolve():
            raise NnunetMtlError(f"-o {output} is {item.folder}, which is one of the inputs ({item.describe()}); "
                                 f"expected a separate output folder (inputs are never overwritten)")
    if not output.is_dir():
        return
    if (output / PER_FOLD_FILE).is_file():
        raise NnunetMtlError(f"-o {output} holds a per-fold run ({output / PER_FOLD_FILE}); expected a new or plain "
                             f"output folder for the ensemble")
    ending = items[0].file_ending
    targets = [f"{c}{ending}" for c in cases] + ["dataset.json", "plans.json", ENSEMBLE_INFO]
    targets += [f"{c}{suffix}" for c in cases for suffix in (".npz", ".pkl")] if save_npz else []
    targets += [CLASS_PREDICTIONS] if with_classes else []
    for name in targets:
        if (output / name).is_dir():
            raise NnunetMtlError(f"{output / name} is a folder, where the ensemble writes a file; expected a file path "
                                 f"(move the folder away)")
    wanted, files = set(cases), [p for p in output.iterdir() if p.is_file()]
    other_masks = sorted(p for p in files if p.name.endswith(ending) and p.name[:-len(ending)] not in wanted)
    if other_masks:
        raise NnunetMtlError(f"-o {output} already holds {other_masks[0].name} ({len(other_masks)} mask(s) of cases "
                             f"not in this ensemble); the ensemble would mix with that earlier prediction: expected a "
                             f"new or empty output folder")
    probabilities = sorted(p for p in files if p.suffix in (".npz", ".pkl")
                           and (not save_npz or p.name[:-4] not in wanted))
    if probabilities:
        why = "of a case not in this ensemble" if probabilities[0].name[:-4] not in wanted else \
            "that this run (without --save_npz) would leave stale beside the new mask"
        raise NnunetMtlError(f"-o {output} already holds {probabilities[0].name} ({len(probabilities)} such file(s)), "
                             f"probabilities {why}; expected a new or empty output folder"
                             f"{'' if save_npz else ' (or --save_npz to replace them)'}")
    old_csv = output / CLASS_PREDICTIONS
    if old_csv.is_file():
        with open(old_csv, newline="") as f:
            old = sorted({(r.get("case_id") or "").strip() for r in csv.DictReader(f)} - wanted - {""})
        if old:
            raise NnunetMtlError(f"-o {output}: {old_csv.name} already holds case {old[0]} ({len(old)} case(s) not in "
                                 f"this ensemble); expected a new or empty output folder")


def plan_ensemble(inputs, output, save_npz: bool = False) -> EnsemblePlan:
    """Everything checked, nothing written: the inputs (at least two, different, each with .npz probabilities),
    the output folder, that the folders agree (labels, classes, cases, probability shapes), and the mean class
    probabilities (computed here: they are small)."""
    from nnunet_mtl.outputs import check_not_an_input, check_output_folder
    output = Path(output)
    inputs = [str(i) for i in inputs]
    if len(inputs) < 2:
        raise NnunetMtlError(f"-i names {len(inputs)} folder; expected at least two prediction folders to ensemble")
    check_output_folder(output)
    check_not_an_input(output, inputs, "-o")
    seen = {}
    for given in inputs:
        key = os.path.realpath(given)
        if key in seen:
            raise NnunetMtlError(f"-i names {given} twice ({seen[key]} is the same folder); expected different "
                                 f"prediction folders (nnunet_mtl ensemble takes no weights)")
        seen[key] = given
    items = [scan_prediction_folder(given) for given in inputs]
    used = {}
    for item in items:
        key = os.path.realpath(item.folder)
        if key in used:
            raise NnunetMtlError(f"{item.given} and {used[key].given} are the same folder {item.folder}; expected "
                                 f"different prediction folders")
        used[key] = item
    check_compatible(items)
    nnunet_managers(items[0])
    cases = check_same_cases(items)
    check_probability_shapes(items, cases)
    with_classes = bool(items[0].csv_paths)
    check_output(output, items, cases, save_npz, with_classes)
    names = rows = None
    if with_classes:
        names = items[0].class_names
        rows = mean_class_rows(names, [i.class_probabilities for i in items])
    return EnsemblePlan(items=items, output=output, cases=cases, save_npz=save_npz, class_names=names,
                        class_rows=rows)


# ----------------------------------------------------------------------------------------------- the masks
def nnunet_managers(item: PredictionFolder) -> tuple:
    """(image reader/writer, label manager) of a folder's plans.json and dataset.json, as ensemble_folders makes
    them (checked before the work: an unknown reader/writer is one line, not a worker's traceback)."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    try:
        plans_manager = PlansManager(item.plans)
        return plans_manager.image_reader_writer_class(), plans_manager.get_label_manager(item.dataset_json)
    except Exception as e:  # KeyError, RuntimeError from nnU-Net's class lookup, a label dict it refuses
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise NnunetMtlError(f"{item.folder / 'plans.json'} / dataset.json cannot be used by nnU-Net's ensemble "
                             f"({type(e).__name__}: {message[:160]}); expected the files nnU-Net's prediction "
                             f"copies into its output folder") from None


def _merge_job(job) -> str:
    """One case, in a worker process: nnU-Net's merge_files with ensemble_folders' arguments."""
    from nnunetv2.ensembling.ensemble import merge_files
    merge_files(*job)
    return job[1]


def merge_jobs(plan: EnsemblePlan, into: Path) -> list[tuple]:
    """merge_files' arguments per case, built as ensemble_folders builds them: the first folder's dataset.json and
    plans.json, its reader/writer and label manager, the files in the order of the inputs."""
    first = plan.items[0]
    reader_writer, label_manager = nnunet_managers(first)
    return [([str(item.folder / f"{case}.npz") for item in plan.items], str(into / case), first.file_ending,
             reader_writer, label_manager, plan.save_npz) for case in plan.cases]


def ensemble_masks(plan: EnsemblePlan, into: Path, num_processes: int = 1, log=print) -> None:
    """nnU-Net's merge_files for every case into ``into`` (in this process for 1, else a spawn pool as
    ensemble_folders uses), with a progress line every tenth of the cases; plus dataset.json (as ensemble_folders
    writes it) and plans.json (so the output can itself be ensembled)."""
    from batchgenerators.utilities.file_and_folder_operations import save_json
    into.mkdir(parents=True, exist_ok=True)
    first = plan.items[0]
    save_json(first.dataset_json, str(into / "dataset.json"), sort_keys=False)
    save_json(first.plans, str(into / "plans.json"), sort_keys=False)
    jobs = merge_jobs(plan, into)
    total, step = len(jobs), max(1, len(jobs) // 10)

    def done(k):
        if k == total or k % step == 0:
            log(f"  masks: {k}/{total} cases", flush=True)

    if num_processes <= 1:
        for k, job in enumerate(jobs, 1):
            _merge_job(job)
            done(k)
        return
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(num_processes) as pool:
        for k, _ in enumerate(pool.imap_unordered(_merge_job, jobs), 1):
            done(k)


def ensemble_info(plan: EnsemblePlan, command: str | None, num_processes: int) -> dict:
    import nnunetv2
    from importlib.metadata import PackageNotFoundError, version
    try:
        nnunet_version = version("nnunetv2")
    except PackageNotFoundError:
        nnunet_version = getattr(nnunetv2, "__version__", None)
    return {
        "written_by": "nnunet_mtl ensemble",
        "command": command,
        "inputs": [item.info() for item in plan.items],
        "cases": len(plan.cases),
        "masks": "nnU-Net's ensemble (nnunetv2.ensembling.ensemble.merge_files, what nnUNetv2_ensemble runs): "
                 "per case the plain mean of the inputs' CASE.npz probabilities, the label manager's arg max, "
                 "written with the first input's CASE.pkl properties, dataset.json and plans.json",
        "class_predictions": (None if plan.class_rows is None else
                              "per case the plain mean of the inputs' class probabilities (class_predictions.csv), "
                              "predicted_class = its arg max"),
        "class_names": plan.class_names,
        "weights": "none: every input counts the same, as in nnUNetv2_ensemble",
        "save_npz": plan.save_npz,
        "num_processes": num_processes,
        "nnunetv2_version": nnunet_version,
    }


def run_ensemble(plan: EnsemblePlan, num_processes: int = 1, command: str | None = None, log=print) -> dict:
    """Write the ensemble of a checked plan: masks (and with save_npz the probabilities) through a hidden staging
    folder inside the output folder, then class_predictions.csv and ensemble.json (atomically). An error before the
    masks are moved into place leaves the output folder as it was (and removes it when this run created it)."""
    output = plan.output
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    staging = temporary_name(output / "ensemble")
    try:
        ensemble_masks(plan, staging, num_processes, log)
        moved = sorted(staging.iterdir(), key=lambda p: (p.suffix in (".json",), p.name))
        for path in moved:
            os.replace(path, output / path.name)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                output.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)
    written = {"masks": len(plan.cases), "output": output}
    if plan.class_rows is not None:
        written["class_predictions"] = write_class_prediction_rows(plan.class_rows, plan.class_names,
                                                                   output / CLASS_PREDICTIONS)
    from nnunet_mtl.atomic import write_text_atomic
    info = ensemble_info(plan, command, num_processes)
    written["info"] = write_text_atomic(json.dumps(info, indent=2) + "\n", output / ENSEMBLE_INFO)
    return written
