"""A recipe: one experiment protocol (datasets, split, trainer rows, test sets, comparisons, a paper's reported
numbers) in a TOML file, read with the standard library's :mod:`tomllib`.

Shipped recipes live next to this module (``nnunet_mtl/recipes/*.toml``); a user's recipe is any ``.toml`` path.
Every field is checked before anything runs; a malformed recipe gets one line per wrong field, all of them at once::

    RECIPE.toml: rows[1].trainer: 'nnUNetTrainerMLT_tiny' is not a trainer; expected e.g. nnUNetTrainerMTL_tiny

The format (docs/recipes.md has it with examples)::

    schema = 1                       # the format's version
    name = "synthetic"               # = the file's stem
    title = "..."                    # one line
    description = "..."              # optional
    [paper]                          # optional: citation, note (deviations from the paper's protocol)
    [estimate]                       # optional: cpu_minutes, gpu_hours (our estimate, shown by `recipe list`)
    [defaults]                       # optional: device ("auto" | "cpu" | "cuda"), checkpoint, timeout_min
    [data.KEY]                       # a folder the user gives as --data KEY=PATH: help = "..."
    [datasets.HANDLE]                # id, name, and either converter (+ source = a data KEY, role = "train" |
                                     # "test", options = [...]) or from = HANDLE and keep, as, seed (drop-masks)
                                     # or test_fraction | test_per_class (+ test_classes), seed (holdout)
    [split]                          # kind = "kfold" (folds >= 2) | "holdout" (fraction, repeats), seed
    seeds = [0, 1, 2]                # optional, top level: train every row once per seed (one-fold splits only)
    [[rows]]                         # key, label, trainer, dataset (a training HANDLE), paper_row (optional)
    [[test_sets]]                    # key, label, and dataset = HANDLE (its imagesTs / labelsTs)
    [[comparisons]]                  # key, a = row, b = [rows], test_set
    [[tables]]                       # a paper's table: id, caption, test_set, metrics = [...],
                                     # values."PAPER ROW" = { metric = "0.80 ± 0.02", ... }
    [[ablations]]                    # nnunet_mtl ablate-guidance (leave one guided feature out): key, row (a
                                     # clinically guided row), test_set, caption, paper."FEATURE" = { delta_macro_f1
                                     # = "-0.0017 ± -0.0035", ... }, paper_names = { FEATURE = "the paper's name" }
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import io
import re
import tomllib
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from dataset_conversion.registry import converter_names
from nnunet_mtl.dataset.partial import DROP_KINDS
from nnunet_mtl.errors import NnunetMtlError

SCHEMA_VERSION = 1
CONVERTERS = converter_names()  # the sub-commands of `nnunet_mtl convert`, as its converters register them
DEVICES = ("auto", "cpu", "cuda")
CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_best.pth")
SPLIT_KINDS = ("kfold", "holdout", "file")
# metric name in a recipe -> the dotted key of nnunet_mtl evaluate's summary.json (docs/evaluation.md)
METRICS = {
    "dice": "segmentation.dice.mean", "iou": "segmentation.iou.mean", "hd95": "segmentation.hd95_px.mean",
    "hd95_mm": "segmentation.hd95_mm.mean", "nsd": "segmentation.nsd_px.mean",
    "attention_iou": "segmentation.attention_iou.mean",
    "accuracy": "classification.accuracy", "balanced_accuracy": "classification.balanced_accuracy",
    "macro_precision": "classification.macro_precision", "macro_recall": "classification.macro_recall",
    "macro_f1": "classification.macro_f1", "weighted_f1": "classification.weighted_f1",
    "auc": "classification.auc", "mcc": "classification.mcc", "brier": "classification.brier",
    "sensitivity": "classification.sensitivity", "specificity": "classification.specificity",
    "precision": "classification.precision", "f1": "classification.f1",
}
# what nnunet_mtl ablate-guidance reports per left-out feature (= nnunet_mtl.evaluation.guidance_ablation.DELTAS)
ABLATION_METRICS = ("delta_macro_precision", "delta_macro_recall", "delta_macro_f1")
KEY = re.compile(r"^[a-z0-9][a-z0-9_]*$")
# a paper's number as printed: "0.80", "0.6300 ± 0.0000", "-0.0004±0.0042", "43.72 ± 4.150"; "-" = not reported;
# a signed std as printed ("-0.0009 ± +0.0045", "-0.0002 ± -0.0044": Salama et al.'s Table 5) is accepted
PAPER_VALUE = re.compile(r"^\s*([-+]?\d*\.?\d+)\s*(?:(?:±|\+-|\+/-)\s*[-+]?(\d*\.?\d+))?\s*$")
NOT_REPORTED = ("-", "–", "—", "")


class RecipeError(NnunetMtlError):
    """A recipe that cannot be used; the message holds one line per wrong field."""


@dataclass(frozen=True)
class DatasetSpec:
    handle: str
    id: int
    name: str
    converter: str | None = None      # a `nnunet_mtl convert` source, or None for a drop-masks copy
    source: str | None = None         # a [data] key (None for the synthetic phantom)
    role: str = "train"               # "train": trained on (and its imagesTs is a test set); "test": imagesTs only
    options: tuple[str, ...] = ()     # extra converter flags, verbatim
    from_: str | None = None          # a drop-masks or holdout copy of this handle
    keep: float | None = None         # drop-masks: the fraction of patients whose masks are kept
    as_kind: str = "none"
    seed: int = 0
    test_fraction: float | None = None       # holdout: this fraction of the patients becomes the test set, or
    test_per_class: int | None = None        # this many patients of every class (of test_classes, when given)
    test_classes: tuple[str, ...] = ()

    @property
    def folder(self) -> str:
        return f"Dataset{self.id:03d}_{self.name}"

    @property
    def kind(self) -> str:
        """How it is made: "convert" (a converter), "drop" (nnunet_mtl drop-masks), "holdout" (nnunet_mtl holdout)."""
        if self.converter is not None:
            return "convert"
        return "holdout" if self.keep is None and (self.test_fraction is not None or self.test_per_class is not None) \
            else "drop"


@dataclass(frozen=True)
class SplitSpec:
    kind: str = "kfold"
    folds: int = 5
    fraction: float | None = None
    seed: int = 12345
    repeats: int = 1          # holdout: this many hold-out splits (seeds seed, seed + 1, ...) as folds 0..repeats-1
    file: Path | None = None  # file: a given split (nnunet_mtl split --from), its folds counted when the recipe loads

    @property
    def fold_ids(self) -> list[int]:
        return list(range(self.folds)) if self.kind in ("kfold", "file") else list(range(self.repeats))


@dataclass(frozen=True)
class RowSpec:
    key: str
    label: str
    trainer: str
    dataset: str
    paper_row: str | None = None


@dataclass(frozen=True)
class TestSetSpec:
    key: str
    label: str
    dataset: str
    metrics: tuple = ()       # the report's columns here (default: the tables' metrics, else a standard set)


@dataclass(frozen=True)
class ComparisonSpec:
    key: str
    a: str
    b: tuple[str, ...]
    test_set: str


@dataclass(frozen=True)
class PaperTable:
    id: str
    caption: str
    test_set: str
    metrics: tuple[str, ...]
    values: dict = field(default_factory=dict)  # paper row -> metric -> the string as printed


@dataclass(frozen=True)
class AblationSpec:
    """nnunet_mtl ablate-guidance of one clinically guided row on one test set (leave one guided feature out)."""
    key: str
    row: str
    test_set: str
    caption: str = ""
    paper: dict = field(default_factory=dict)        # our feature name -> delta metric -> the string as printed
    paper_names: dict = field(default_factory=dict)  # our feature name -> the paper's name for it (as printed)


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    path: Path
    description: str = ""
    citation: str = ""
    note: str = ""
    estimate: dict = field(default_factory=dict)
    device: str = "auto"
    checkpoint: str = "checkpoint_final.pth"
    timeout_min: int = 24 * 60
    data: dict = field(default_factory=dict)            # key -> help
    datasets: dict = field(default_factory=dict)        # handle -> DatasetSpec
    split: SplitSpec = field(default_factory=SplitSpec)
    rows: tuple = ()
    test_sets: tuple = ()
    comparisons: tuple = ()
    tables: tuple = ()
    ablations: tuple = ()
    seeds: tuple = ()         # training seeds (nnUNet_mtl_seed): every row trained once per seed; () = one unseeded

    def row(self, key: str) -> RowSpec:
        return next(r for r in self.rows if r.key == key)

    def test_set(self, key: str) -> TestSetSpec:
        return next(t for t in self.test_sets if t.key == key)


def parse_paper_value(text: str) -> tuple[float, float | None] | None:
    """(value, std or None) of a number as a paper prints it; None for "not reported"."""
    if text.strip() in NOT_REPORTED:
        return None
    m = PAPER_VALUE.match(text)
    if m is None:
        raise ValueError(text)
    return float(m.group(1)), (float(m.group(2)) if m.group(2) else None)


@functools.lru_cache(maxsize=None)
def trainer_class(trainer: str):
    """The class of a trainer named in a recipe: one of nnunet_mtl's, else one nnU-Net's own ``-tr`` finds (its
    trainers, e.g. nnUNetTrainer or nnUNetTrainer_250epochs, and those under nnUNet_extTrainer); None if neither.
    nnU-Net's are segmentation-only rows (no classification head): predicted by nnUNetv2_predict."""
    from nnunet_mtl.trainers import TRAINERS
    if trainer in TRAINERS:
        return TRAINERS[trainer]
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", trainer):
        return None
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():  # nnU-Net prints where it searches; the modules it imports warn
        warnings.simplefilter("ignore")
        try:
            return recursive_find_trainer_class_by_name(trainer)
        except (RuntimeError, AssertionError):
            return None


def trainer_guided_features(trainer: str) -> tuple[str, ...]:
    """The guided radiomics features a trainer writes into its plans (``guidance_features``: what ablate-guidance
    reads back from the model's plans), () for a trainer without clinical guidance or an unknown name."""
    cls = trainer_class(trainer)
    for term in getattr(cls, "terms", ()):
        features = term.plans_entries().get("guidance_features")
        if features:
            return tuple(features)
    return ()


# ------------------------------------------------------------------------------------------------ finding recipes
def shipped_recipes() -> dict[str, Path]:
    """Name -> path of every recipe shipped with the package."""
    folder = resources.files("nnunet_mtl.recipes")
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".toml")}


def find_recipe(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix == ".toml":
        if not path.is_file():
            raise RecipeError(f"recipe file {path} does not exist")
        return path
    shipped = shipped_recipes()
    if name_or_path not in shipped:
        close = difflib.get_close_matches(name_or_path, shipped, n=1)
        raise RecipeError(f"no recipe named {name_or_path!r}; expected one of {', '.join(sorted(shipped))}"
                          + (f" (did you mean {close[0]!r}?)" if close else "") + " or a path to a .toml file")
    return shipped[name_or_path]


def load_recipe(name_or_path: str, check_trainers: bool = True) -> Recipe:
    """The recipe, every field checked (all errors at once, one line each)."""
    path = find_recipe(name_or_path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: cannot be read: {e}") from None
    return _Checker(path, raw, check_trainers).recipe()


# ------------------------------------------------------------------------------------------------ checking
class _Checker:
    def __init__(self, path: Path, raw: dict, check_trainers: bool):
        self.path, self.raw, self.check_trainers = path, raw, check_trainers
        self.errors: list[str] = []

    def error(self, where: str, message: str) -> None:
        self.errors.append(f"{self.path.name}: {where}: {message}")

    def get(self, table: dict, key: str, where: str, kind, required: bool = False, default=None, choices=None):
        """table[key] checked for type (and choices); ``default`` when absent (an error when required)."""
        if key not in table:
            if required:
                self.error(f"{where}{key}", "missing")
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            names = " or ".join({int: "an integer", float: "a number", str: "a string", list: "a list",
                                 dict: "a table", bool: "true or false"}[k] for k in kinds)
            self.error(f"{where}{key}", f"{value!r} is {type(value).__name__}; expected {names}")
            return default
        if choices is not None and value not in choices:
            self.error(f"{where}{key}", f"{value!r}; expected one of {', '.join(map(str, choices))}")
            return default
        return value

    def unknown(self, table: dict, allowed: set, where: str) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                self.error(f"{where}{key}", "unknown field" + (f" (did you mean {close[0]!r}?)" if close else
                                                               f"; expected one of {', '.join(sorted(allowed))}"))

    def key_of(self, table: dict, where: str, seen: set) -> str | None:
        key = self.get(table, "key", where, str, required=True)
        if key is None:
            return None
        if not KEY.match(key):
            self.error(f"{where}key", f"{key!r}; expected lower-case letters, digits and _ (it names folders)")
        elif key in seen:
            self.error(f"{where}key", f"{key!r} is used twice")
        seen.add(key)
        return key

    def recipe(self) -> Recipe:
        raw = self.raw
        self.unknown(raw, {"schema", "name", "title", "description", "paper", "estimate", "defaults", "data",
                           "datasets", "split", "rows", "test_sets", "comparisons", "tables", "ablations", "seeds"}, "")
        version = self.get(raw, "schema", "", int, required=True)
        if version is not None and version != SCHEMA_VERSION:
            self.error("schema", f"{version}; expected {SCHEMA_VERSION}")
        name = self.get(raw, "name", "", str, required=True) or self.path.stem
        if name != self.path.stem:
            self.error("name", f"{name!r} differs from the file's name {self.path.stem!r}; expected the same")
        title = self.get(raw, "title", "", str, required=True) or ""
        paper = self.get(raw, "paper", "", dict, default={})
        self.unknown(paper, {"citation", "note"}, "paper.")
        estimate = self.get(raw, "estimate", "", dict, default={})
        self.unknown(estimate, {"cpu_minutes", "gpu_hours"}, "estimate.")
        for k in estimate:
            self.get(estimate, k, "estimate.", (int, float))
        defaults = self.get(raw, "defaults", "", dict, default={})
        self.unknown(defaults, {"device", "checkpoint", "timeout_min"}, "defaults.")
        timeout = self.get(defaults, "timeout_min", "defaults.", int, default=24 * 60)
        if timeout is not None and timeout < 1:
            self.error("defaults.timeout_min", f"{timeout}; expected at least 1 (minutes)")
        data = {}
        for key, spec in self.get(raw, "data", "", dict, default={}).items():
            if not isinstance(spec, dict):
                self.error(f"data.{key}", "expected a table with help = \"...\"")
                continue
            self.unknown(spec, {"help"}, f"data.{key}.")
            data[key] = self.get(spec, "help", f"data.{key}.", str, default="")
        datasets = self.datasets(data)
        split = self.split()
        rows = self.rows(datasets)
        test_sets = self.test_sets(datasets)
        comparisons = self.comparisons(rows, test_sets)
        tables = self.tables(rows, test_sets)
        ablations = self.ablations(rows, test_sets)
        seeds = self.seeds(split, ablations)
        device = self.get(defaults, "device", "defaults.", str, default="auto", choices=DEVICES)
        checkpoint = self.get(defaults, "checkpoint", "defaults.", str, default="checkpoint_final.pth",
                              choices=CHECKPOINTS)
        description = self.get(raw, "description", "", str, default="")
        if self.errors:
            raise RecipeError("\n".join(self.errors))
        return Recipe(name=name, title=title, path=self.path, description=description,
                      citation=paper.get("citation", ""), note=paper.get("note", ""), estimate=estimate,
                      device=device, checkpoint=checkpoint, timeout_min=timeout or 24 * 60, data=data,
                      datasets=datasets, split=split, rows=tuple(rows),
                      test_sets=tuple(test_sets), comparisons=tuple(comparisons), tables=tuple(tables),
                      ablations=tuple(ablations), seeds=tuple(seeds))

    def seeds(self, split: SplitSpec, ablations: list) -> list[int]:
        """``seeds = [0, 1, 2]``: every row trained once per seed, the split fixed. One fold only: seeds x folds
        would multiply the trainings and leave two spreads to tell apart (docs/recipes.md)."""
        if "seeds" not in self.raw:
            return []
        seeds = self.raw["seeds"]
        if (not isinstance(seeds, list) or len(seeds) < 2 or not all(type(x) is int and x >= 0 for x in seeds)
                or len(set(seeds)) != len(seeds)):
            self.error("seeds", f"{seeds!r}; expected a list of at least two different integers >= 0, e.g. [0, 1, 2]")
            return []
        if len(split.fold_ids) != 1:
            self.error("seeds", f"with a {len(split.fold_ids)}-fold split; expected a one-fold split (kind = "
                                "\"holdout\" without repeats, or a file with one fold): seeds repeat the training of "
                                "one fixed split")
        if ablations:
            self.error("seeds", "with [[ablations]]; expected one or the other (ablate-guidance reads one model per "
                                "fold)")
        return seeds

    def datasets(self, data: dict) -> dict:
        out, ids = {}, {}
        table = self.get(self.raw, "datasets", "", dict, required=True, default={})
        for handle, spec in table.items():
            w = f"datasets.{handle}."
            if not isinstance(spec, dict):
                self.error(f"datasets.{handle}", "expected a table")
                continue
            if not KEY.match(handle):
                self.error(f"datasets.{handle}", "expected a handle of lower-case letters, digits and _")
            self.unknown(spec, {"id", "name", "converter", "source", "role", "options", "from", "keep", "as",
                                "seed", "test_fraction", "test_per_class", "test_classes"}, w)
            id_ = self.get(spec, "id", w, int, required=True)
            if id_ is not None and not 1 <= id_ <= 999:
                self.error(f"{w}id", f"{id_}; expected 1-999 (nnU-Net's dataset ids)")
            elif id_ is not None and id_ in ids:
                self.error(f"{w}id", f"{id_} is also datasets.{ids[id_]}'s; expected a different id")
            ids[id_] = handle
            name = self.get(spec, "name", w, str, required=True)
            if name is not None and not re.match(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$", name):
                self.error(f"{w}name", f"{name!r}; expected letters, digits, _ and - (DatasetNNN_NAME)")
            converter = self.get(spec, "converter", w, str, choices=CONVERTERS)
            from_ = self.get(spec, "from", w, str)
            both = "converter" in spec and "from" in spec  # one error for it; the checks that follow assume one
            if ("converter" in spec) == ("from" in spec):
                self.error(f"datasets.{handle}", "expected either converter = \"...\" (a conversion) or from = "
                                                 "HANDLE (a drop-masks or holdout copy), not both or neither")
            source = self.get(spec, "source", w, str)
            if converter is not None and converter != "synthetic" and source is None and not both:
                self.error(f"{w}source", f"missing; the {converter} converter reads a folder: expected a [data] key")
            if source is not None and source not in data:
                self.error(f"{w}source", f"{source!r} is not a [data] key; expected one of "
                                         f"{', '.join(data) or '(none declared)'}")
            options = self.get(spec, "options", w, list, default=[])
            if any(not isinstance(o, str) for o in options):
                self.error(f"{w}options", "expected a list of strings (converter flags, verbatim)")
                options = []
            role = self.get(spec, "role", w, str, default="train", choices=("train", "test"))
            keep = self.get(spec, "keep", w, (int, float))
            test_fraction = self.get(spec, "test_fraction", w, (int, float))
            test_per_class = self.get(spec, "test_per_class", w, int)
            test_classes = self.get(spec, "test_classes", w, list, default=[])
            holdout = test_fraction is not None or test_per_class is not None
            if from_ is not None and not both:
                if keep is None and not holdout:
                    self.error(f"{w}keep", "missing; expected keep = F (a drop-masks copy: the fraction of masks "
                                           "kept) or test_fraction / test_per_class (a holdout copy)")
                elif keep is not None and holdout:
                    self.error(f"datasets.{handle}", "expected keep (drop-masks) or test_fraction / test_per_class "
                                                     "(holdout), not both: make two datasets, the holdout first")
                elif keep is not None and not 0 < keep < 1:
                    self.error(f"{w}keep", f"{keep}; expected a fraction in (0, 1)")
                if test_fraction is not None and test_per_class is not None:
                    self.error(f"datasets.{handle}", "expected test_fraction or test_per_class, not both")
                elif test_fraction is not None and not 0 < test_fraction < 1:
                    self.error(f"{w}test_fraction", f"{test_fraction}; expected a fraction in (0, 1)")
                elif test_per_class is not None and test_per_class < 1:
                    self.error(f"{w}test_per_class", f"{test_per_class}; expected at least 1")
            elif (holdout or keep is not None) and not both:
                self.error(f"datasets.{handle}", "keep / test_fraction / test_per_class need from = HANDLE")
            if any(not isinstance(c, str) for c in test_classes):
                self.error(f"{w}test_classes", "expected a list of class names")
                test_classes = []
            elif test_classes and test_per_class is None:
                self.error(f"{w}test_classes", "only with test_per_class")
            out[handle] = DatasetSpec(handle=handle, id=id_ or 0, name=name or "", converter=converter, source=source,
                                      role=role or "train", options=tuple(options), from_=from_, keep=keep,
                                      as_kind=self.get(spec, "as", w, str, default="none", choices=DROP_KINDS),
                                      seed=self.get(spec, "seed", w, int, default=0), test_fraction=test_fraction,
                                      test_per_class=test_per_class, test_classes=tuple(test_classes))
        for handle, spec in out.items():
            if spec.from_ is not None:
                origin = out.get(spec.from_)
                if origin is None:
                    self.error(f"datasets.{handle}.from", f"{spec.from_!r} is not a dataset handle")
                elif origin.role != "train" or origin.kind == "drop" or (spec.kind == "holdout" and
                                                                          origin.kind != "convert"):
                    self.error(f"datasets.{handle}.from", f"{spec.from_!r} must be a converted training dataset"
                                                          + ("" if spec.kind == "holdout" else " or a holdout copy"))
        if not out and "datasets" in self.raw:
            self.error("datasets", "empty; expected at least one dataset")
        return out

    def split(self) -> SplitSpec:
        spec = self.get(self.raw, "split", "", dict, required=True, default={})
        self.unknown(spec, {"kind", "folds", "fraction", "seed", "repeats", "file"}, "split.")
        kind = self.get(spec, "kind", "split.", str, default="kfold", choices=SPLIT_KINDS) or "kfold"
        file = self.get(spec, "file", "split.", str)
        if kind == "file":
            return self._split_file(spec, file)
        if file is not None:
            self.error("split.file", "only for kind = \"file\"")
        folds = self.get(spec, "folds", "split.", int, default=5 if kind == "kfold" else 1)
        fraction = self.get(spec, "fraction", "split.", (int, float))
        if kind == "kfold" and folds is not None and folds < 2:
            self.error("split.folds", f"{folds}; expected at least 2 for kind = \"kfold\" (or kind = \"holdout\")")
        if kind == "holdout":
            if "folds" in spec and folds != 1:
                self.error("split.folds", "a holdout split has one fold; expected no folds field")
            if fraction is None:
                self.error("split.fraction", "missing; kind = \"holdout\" needs the validation fraction")
            elif not 0 < fraction < 1:
                self.error("split.fraction", f"{fraction}; expected a fraction in (0, 1)")
        elif fraction is not None:
            self.error("split.fraction", "only for kind = \"holdout\"")
        repeats = self.get(spec, "repeats", "split.", int, default=1)
        if repeats is not None and kind != "holdout" and "repeats" in spec:
            self.error("split.repeats", "only for kind = \"holdout\" (k folds are k runs already)")
        elif repeats is not None and repeats < 1:
            self.error("split.repeats", f"{repeats}; expected at least 1")
        return SplitSpec(kind=kind, folds=folds if kind == "kfold" and folds else 1, fraction=fraction,
                         seed=self.get(spec, "seed", "split.", int, default=12345),
                         repeats=repeats if kind == "holdout" and repeats and repeats > 0 else 1)

    def _split_file(self, spec: dict, file: str | None) -> SplitSpec:
        """kind = "file": a given split (a paper's, or the user's), path relative to the recipe's folder; its folds
        are counted now, as the grid of trainings depends on them; the split step checks it against the dataset."""
        from nnunet_mtl.dataset.splits import SPLIT_FILE_HELP, count_split_file_folds
        for other in ("folds", "fraction", "repeats", "seed"):
            if other in spec:
                self.error(f"split.{other}", "not with kind = \"file\" (the file gives the folds)")
        if file is None:
            self.error("split.file", f"missing; kind = \"file\" needs {SPLIT_FILE_HELP}")
            return SplitSpec(kind="file", folds=1)
        path = Path(file).expanduser()
        path = (path if path.is_absolute() else self.path.parent / path).resolve()
        if not path.is_file():
            self.error("split.file", f"{str(path)!r} does not exist; expected {SPLIT_FILE_HELP}")
            return SplitSpec(kind="file", folds=1, file=path)
        try:
            folds = count_split_file_folds(path)
        except NnunetMtlError as e:
            self.error("split.file", str(e))
            folds = 1
        return SplitSpec(kind="file", folds=folds, file=path)

    def metric_list(self, table: dict, w: str, required: bool) -> list[str]:
        """``metrics = [...]`` of a table or a test set: the known metric names of it (each unknown one an error)."""
        metrics = self.get(table, "metrics", w, list, required=required, default=[])
        for j, m in enumerate(metrics):
            if m not in METRICS:
                close = difflib.get_close_matches(str(m), METRICS, n=1)
                self.error(f"{w}metrics[{j}]", f"{m!r} is not a metric; expected one of {', '.join(METRICS)}"
                           if not close else f"{m!r} is not a metric; did you mean {close[0]!r}?")
        return [m for m in metrics if m in METRICS]

    def array(self, name: str, required: bool) -> list:
        items = self.get(self.raw, name, "", list, required=required, default=[])
        good = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                self.error(f"{name}[{i}]", f"expected a table ([[{name}]])")
            else:
                good.append((i, item))
        return good

    def rows(self, datasets: dict) -> list[RowSpec]:
        out, seen = [], set()
        trainers = self._trainers() if self.check_trainers else None
        for i, row in self.array("rows", required=True):
            w = f"rows[{i}]."
            self.unknown(row, {"key", "label", "trainer", "dataset", "paper_row"}, w)
            key = self.key_of(row, w, seen)
            trainer = self.get(row, "trainer", w, str, required=True)
            if trainer is not None and trainers is not None and trainer_class(trainer) is None:
                close = difflib.get_close_matches(trainer, trainers, n=1)
                self.error(f"{w}trainer", f"{trainer!r} is not a trainer" + (f"; expected e.g. {close[0]}" if close
                                                                              else " of nnunet_mtl or nnU-Net"))
            dataset = self.get(row, "dataset", w, str, required=True)
            if dataset is not None and dataset not in datasets:
                self.error(f"{w}dataset", f"{dataset!r} is not a dataset handle")
            elif dataset is not None and datasets[dataset].role != "train":
                self.error(f"{w}dataset", f"{dataset!r} is a test set (role = \"test\"); expected a training dataset")
            out.append(RowSpec(key=key or "", label=self.get(row, "label", w, str, default=key or ""),
                               trainer=trainer or "", dataset=dataset or "",
                               paper_row=self.get(row, "paper_row", w, str)))
        if not out and isinstance(self.raw.get("rows"), list):  # a wrong type has its own error already
            self.error("rows", "empty; expected at least one [[rows]] entry")
        return out

    def _trainers(self) -> list[str]:
        from nnunet_mtl.trainers import TRAINERS
        return sorted(TRAINERS)

    def test_sets(self, datasets: dict) -> list[TestSetSpec]:
        out, seen = [], set()
        for i, ts in self.array("test_sets", required=False):
            w = f"test_sets[{i}]."
            self.unknown(ts, {"key", "label", "dataset", "metrics"}, w)
            key = self.key_of(ts, w, seen)
            dataset = self.get(ts, "dataset", w, str, required=True)
            if dataset is not None and dataset not in datasets:
                self.error(f"{w}dataset", f"{dataset!r} is not a dataset handle")
            metrics = self.metric_list(ts, w, required=False)
            out.append(TestSetSpec(key=key or "", label=self.get(ts, "label", w, str, default=key or ""),
                                   dataset=dataset or "", metrics=tuple(metrics)))
        return out

    def comparisons(self, rows: list, test_sets: list) -> list[ComparisonSpec]:
        out, seen = [], set()
        row_keys, ts_keys = {r.key for r in rows}, {t.key for t in test_sets}
        for i, c in self.array("comparisons", required=False):
            w = f"comparisons[{i}]."
            self.unknown(c, {"key", "a", "b", "test_set"}, w)
            key = self.key_of(c, w, seen)
            a = self.get(c, "a", w, str, required=True)
            b = self.get(c, "b", w, list, required=True, default=[])
            for name, value in [("a", a)] + [(f"b[{j}]", v) for j, v in enumerate(b)]:
                if value is not None and value not in row_keys:
                    self.error(f"{w}{name}", f"{value!r} is not a row key; expected one of "
                                             f"{', '.join(sorted(row_keys))}")
            if not b and isinstance(c.get("b"), list):
                self.error(f"{w}b", "empty; expected at least one row to compare a with")
            if a in b:
                self.error(f"{w}b", f"holds a ({a!r}) itself")
            test_set = self.get(c, "test_set", w, str, required=True)
            if test_set is not None and test_set not in ts_keys:
                self.error(f"{w}test_set", f"{test_set!r} is not a test set key")
            out.append(ComparisonSpec(key=key or "", a=a or "", b=tuple(v for v in b if isinstance(v, str)),
                                      test_set=test_set or ""))
        return out

    def tables(self, rows: list, test_sets: list) -> list[PaperTable]:
        out = []
        labels = {r.paper_row or r.label for r in rows}
        ts_keys = {t.key for t in test_sets}
        for i, t in self.array("tables", required=False):
            w = f"tables[{i}]."
            self.unknown(t, {"id", "caption", "test_set", "metrics", "values"}, w)
            test_set = self.get(t, "test_set", w, str, required=True)
            if test_set is not None and test_set not in ts_keys:
                self.error(f"{w}test_set", f"{test_set!r} is not a test set key")
            metrics = self.metric_list(t, w, required=True)
            values = self.get(t, "values", w, dict, default={})
            for row_label, cells in values.items():
                where = f"{w}values.{row_label}"
                if row_label not in labels and not row_label.startswith("paper:"):
                    self.error(where, f"not a row's paper_row or label; expected one of {', '.join(sorted(labels))} "
                                      f"(or \"paper:NAME\" for a row only the paper has)")
                if not isinstance(cells, dict):
                    self.error(where, "expected a table metric = \"value as printed\"")
                    continue
                for metric, text in cells.items():
                    if metric not in metrics:
                        self.error(f"{where}.{metric}", f"not one of the table's metrics ({', '.join(metrics)})")
                    if not isinstance(text, str):
                        self.error(f"{where}.{metric}", f"{text!r}; expected the number as printed, in quotes "
                                                        f"(\"0.83\", \"0.6300 ± 0.0000\", \"-\")")
                        continue
                    try:
                        parse_paper_value(text)
                    except ValueError:
                        self.error(f"{where}.{metric}", f"{text!r}; expected a number, \"mean ± std\" or \"-\"")
            out.append(PaperTable(id=self.get(t, "id", w, str, required=True) or "",
                                  caption=self.get(t, "caption", w, str, default=""), test_set=test_set or "",
                                  metrics=tuple(metrics), values=values))
        return out

    def paper_text(self, where: str, text) -> bool:
        """A paper's value as printed: a string parse_paper_value reads (an error naming ``where`` otherwise)."""
        if not isinstance(text, str):
            self.error(where, f"{text!r}; expected the number as printed, in quotes (\"0.83\", \"0.6300 ± 0.0000\", "
                              f"\"-\")")
            return False
        try:
            parse_paper_value(text)
        except ValueError:
            self.error(where, f"{text!r}; expected a number, \"mean ± std\" or \"-\"")
            return False
        return True

    def ablations(self, rows: list, test_sets: list) -> list[AblationSpec]:
        out, seen = [], set()
        by_key, ts_keys = {r.key: r for r in rows}, {t.key for t in test_sets}
        for i, a in self.array("ablations", required=False):
            w = f"ablations[{i}]."
            self.unknown(a, {"key", "row", "test_set", "caption", "paper", "paper_names"}, w)
            key = self.key_of(a, w, seen)
            row = self.get(a, "row", w, str, required=True)
            features = None
            if row is not None and row not in by_key:
                self.error(f"{w}row", f"{row!r} is not a row key; expected one of {', '.join(sorted(by_key))}")
            elif row is not None and self.check_trainers:
                trainer = by_key[row].trainer
                features = trainer_guided_features(trainer)
                if not features and trainer in self._trainers():  # an unknown trainer has its own line (rows)
                    self.error(f"{w}row", f"{row!r} trains {trainer}, which has no guided features; expected a "
                                          f"clinically guided row (nnUNetTrainerClinGuided* or nnUNetTrainerRLAR*)")
            if not features:  # unchecked trainers (or an error above): the default 13
                from nnunet_mtl.radiomics.features import DEFAULT_FEATURES
                features = DEFAULT_FEATURES
            test_set = self.get(a, "test_set", w, str, required=True)
            if test_set is not None and test_set not in ts_keys:
                self.error(f"{w}test_set", f"{test_set!r} is not a test set key")

            def feature(name: str, where: str) -> bool:
                if name in features:
                    return True
                close = difflib.get_close_matches(name, features, n=1)
                self.error(where, "not a guided feature" + (f" (did you mean {close[0]!r}?)" if close else
                                                            f"; expected one of {', '.join(features)}"))
                return False

            paper = self.get(a, "paper", w, dict, default={})
            for name, cells in paper.items():
                where = f"{w}paper.{name}"
                feature(name, where)
                if not isinstance(cells, dict):
                    self.error(where, f"expected a table {{ {ABLATION_METRICS[-1]} = \"-0.0017 ± 0.0035\", ... }}")
                    continue
                for metric, text in cells.items():
                    if metric not in ABLATION_METRICS:
                        close = difflib.get_close_matches(str(metric), ABLATION_METRICS, n=1)
                        self.error(f"{where}.{metric}", "not an ablation metric" + (
                            f" (did you mean {close[0]!r}?)" if close else f"; expected one of "
                                                                           f"{', '.join(ABLATION_METRICS)}"))
                    self.paper_text(f"{where}.{metric}", text)
            names = self.get(a, "paper_names", w, dict, default={})
            for name, printed in names.items():
                feature(name, f"{w}paper_names.{name}")
                if not isinstance(printed, str):
                    self.error(f"{w}paper_names.{name}", f"{printed!r}; expected the paper's name for it, in quotes")
            out.append(AblationSpec(key=key or "", row=row or "", test_set=test_set or "",
                                    caption=self.get(a, "caption", w, str, default=""),
                                    paper={k: v for k, v in paper.items() if isinstance(v, dict)},
                                    paper_names={k: v for k, v in names.items() if isinstance(v, str)}))
        return out
