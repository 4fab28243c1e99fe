"""Seam 4, per-case data: one table of the training cases, looked up by nnU-Net's case keys (``batch['keys']``).

Built on the raw dataset contract (``cases.csv``, read and checked by
:func:`~nnunet_mtl.dataset.contract.read_cases_csv`) and gives per-batch tensors of its numeric columns
(:meth:`CaseTable.tensor`) and values of any column (:meth:`CaseTable.values`):

- ``class``: the class index (``class_labels`` of dataset.json);
- ``patient_id``: text (values only);
- ``mask``: how the case's mask is annotated, as an index into :data:`MASK_KINDS` (``full``, ``box``, ``none``;
  the optional ``cases.csv`` column ``mask``, missing = ``full``);
- ``has_lesion``: 1 / 0 whether the image shows a lesion, -1 when unknown (an unannotated image). Read on first use
  from nnU-Net's preprocessed case properties (the foreground locations it samples at preprocessing), so a
  trainer that never asks pays nothing;
- anything a term adds with :meth:`CaseTable.add` (e.g. clinical guidance's radiomics targets).

Nothing here imports nnU-Net. ``copy_if_changed`` is how ``cases.csv`` is copied beside the preprocessed data and the
results: atomically (a temporary file in the same folder, then a rename), so two folds started at once never see a
half-written file.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from nnunet_mtl.atomic import atomic_open
from nnunet_mtl.dataset.contract import MASK_KINDS, ContractError, read_cases_csv

LESION_LABEL = 1


class CaseTable:
    def __init__(self, cases: pd.DataFrame, class_labels: Mapping[str, int], preprocessed_folder: Path | None = None):
        self.class_labels = dict(class_labels)
        self.class_names = sorted(self.class_labels, key=self.class_labels.get)
        self.source = None
        ids = list(cases["case_id"])
        self._keys = ids
        self._columns: dict[str, dict[str, Any]] = {
            "class": {c: int(self.class_labels[k]) for c, k in zip(ids, cases["class"])},
            "patient_id": dict(zip(ids, cases["patient_id"])),
            "mask": {c: MASK_KINDS.index(m) for c, m in zip(ids, cases["mask"] if "mask" in cases.columns
                                                           else ["full"] * len(ids))},
        }
        self._lazy: dict[str, Callable[[], dict[str, Any]]] = {}
        if preprocessed_folder is not None:
            folder = Path(preprocessed_folder)
            self._lazy["has_lesion"] = lambda: self._has_lesion_from_preprocessed(folder)

    @classmethod
    def from_csv(cls, path, class_labels: Mapping[str, int], split: str | None = "train",
                 preprocessed_folder: Path | None = None) -> "CaseTable":
        cases = read_cases_csv(path, dict(class_labels))
        if split is not None:
            cases = cases[cases["split"] == split]
        table = cls(cases, class_labels, preprocessed_folder)
        table.source = Path(path)
        return table

    # ------------------------------------------------------------------ lookup
    def keys(self) -> list[str]:
        return list(self._keys)

    def __contains__(self, key) -> bool:
        return key in self._columns["class"]

    def __len__(self) -> int:
        return len(self._keys)

    def columns(self) -> list[str]:
        return [*self._columns, *[k for k in self._lazy if k not in self._columns]]

    def column(self, name: str) -> dict[str, Any]:
        if name not in self._columns:
            if name not in self._lazy:
                raise KeyError(f"the case table has no column {name!r} (columns: {', '.join(self.columns())})")
            self._columns[name] = self._lazy.pop(name)()
        return self._columns[name]

    def value(self, name: str, key: str):
        column = self.column(name)
        if key not in column:
            raise KeyError(f"case {key!r} has no {name!r} in the case table"
                           f"{f' ({self.source})' if self.source else ''}")
        return column[key]

    def values(self, name: str, keys: Iterable[str]) -> list:
        return [self.value(name, k) for k in keys]

    def tensor(self, name: str, keys: Sequence[str], device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The column for ``keys`` as one tensor (scalars -> (B,), arrays of shape S -> (B, *S))."""
        values = self.values(name, keys)
        if values and isinstance(values[0], str):
            raise TypeError(f"column {name!r} is text; use values({name!r}, keys) (or Batch.values) "
                            f"instead of a tensor")
        if values and isinstance(values[0], np.ndarray):
            array = np.stack(values)
        else:
            array = np.asarray(values)
        if dtype is None:
            dtype = torch.long if np.issubdtype(array.dtype, np.integer) else (
                torch.bool if array.dtype == np.bool_ else torch.float32)
        return torch.as_tensor(array, dtype=dtype, device=device)

    # ------------------------------------------------------------------ extension
    def add(self, name: str, values: Mapping[str, Any]) -> None:
        """Add (or replace) a column; every case of the table must have a value."""
        if name in ("class", "patient_id", "mask"):
            raise ValueError(f"column {name!r} comes from cases.csv and cannot be replaced")
        missing = [k for k in self._keys if k not in values]
        if missing:
            raise ValueError(f"column {name!r} has no value for {len(missing)} case(s), e.g. {missing[0]}")
        self._columns[name] = {k: values[k] for k in self._keys}
        self._lazy.pop(name, None)

    def _has_lesion_from_preprocessed(self, folder: Path) -> dict[str, int]:
        result = {}
        for key in self._keys:
            kind = MASK_KINDS[self._columns["mask"][key]]
            if kind == "none":
                result[key] = -1
                continue
            if kind == "box":  # a box is drawn around a lesion
                result[key] = 1
                continue
            path = folder / f"{key}.pkl"
            try:
                with open(path, "rb") as f:
                    locations = pickle.load(f)["class_locations"]
            except FileNotFoundError:
                raise ContractError(f"{path} does not exist; expected nnU-Net's preprocessed properties of case {key} "
                                    f"(run nnUNetv2_plan_and_preprocess)") from None
            result[key] = int(len(locations.get(LESION_LABEL, [])) > 0)
        return result


def copy_if_changed(source: Path, target: Path) -> bool:
    """Copy ``source`` to ``target`` atomically unless ``target`` already has the same bytes; True if copied."""
    data = Path(source).read_bytes()
    target = Path(target)
    if target.is_file() and target.read_bytes() == data:
        return False
    with atomic_open(target, "wb") as f:
        f.write(data)
    return True
