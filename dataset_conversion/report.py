"""The conversion report: what a conversion did (counts, skipped cases, duplicates, near-duplicates, label
conflicts, bad clinical values, notes), printed with :meth:`ConversionReport.format` and written as
:data:`REPORT_FILE` into the dataset folder by :func:`write_report`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from dataset_conversion.common import is_missing
from dataset_conversion.duplicates import NEAR_DUPLICATE_MAX_BITS

REPORT_FILE = "conversion_report.json"
PRINT_LIMIT = 15  # lines per section when the report is printed


class ConversionReport:
    """What a conversion did: counts, skipped cases, duplicates, near-duplicates, label conflicts (near-duplicates
    of different classes), bad clinical values, notes.

    Printed with :meth:`format` and written as ``conversion_report.json`` into the dataset folder (a list of
    conversions: ``--add-to-existing`` appends). nnU-Net and the contract ignore extra files there."""

    def __init__(self, converter: str, source):
        self.converter = converter
        self.source = str(source)
        self.dataset = ""
        self.options: dict = {}
        self.summary: dict = {}
        self.added: dict = {}
        self.skipped: list[dict] = []
        self.duplicates: list[dict] = []
        self.near_duplicates: list[dict] = []
        self.near_duplicates_total = 0
        self.label_conflicts: list[dict] = []  # near-duplicates of different classes: the first REPORT_LIST_LIMIT
        self.label_conflicts_total = 0
        self.label_conflicts_by_distance: dict[int, int] = {}  # dHash bits -> conflicting pairs (all of them)
        self.label_conflicts_policy = "keep"  # --label-conflicts
        self.label_conflicts_dropped: list[str] = []  # case ids dropped for a conflict (every one, not a sample)
        self.bad_values: list[dict] = []
        self.patients_merged: list[dict] = []  # identical images under two patient ids: merged into one
        self.mask_encodings: dict[str, int] = {}  # encoding -> mask files of the cases added, read that way
        self.notes: list[str] = []
        self.seconds = 0.0
        self.path: Path | None = None

    def skip(self, case: str, reason: str) -> None:
        self.skipped.append({"case": str(case), "reason": reason})

    def note(self, text: str) -> None:
        """A fact the user should know about the conversion (e.g. "no patient ids: one patient per image")."""
        if text not in self.notes:
            self.notes.append(text)

    def bad_value(self, case: str, column: str, value, expected: str) -> None:
        self.bad_values.append({"case": str(case), "column": column, "value": _jsonable(value), "expected": expected})

    def number(self, case: str, column: str, value, *, low: float | None = None, high: float | None = None,
               integer: bool = False):
        """A clinical number, or None when the cell is empty / "not available" (silently) or unusable (reported
        as a bad value, not fatal): not a number, not an integer when ``integer``, outside [low, high]."""
        if is_missing(value):
            return None
        try:
            number = float(str(value).strip().replace(",", "."))  # European decimal commas occur in sheets
        except ValueError:
            self.bad_value(case, column, value, "a number")
            return None
        rng = f" in [{low}, {high}]" if low is not None or high is not None else ""
        if not np.isfinite(number) or (low is not None and number < low) or (high is not None and number > high):
            self.bad_value(case, column, value, f"a number{rng}")
            return None
        if integer:
            if number != int(number):
                self.bad_value(case, column, value, f"an integer{rng}")
                return None
            return int(number)
        return number

    def to_dict(self) -> dict:
        return {
            "converter": self.converter, "source": self.source, "dataset": self.dataset, "options": self.options,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(self.seconds, 2),
            "counts": self.summary, "added": self.added, "notes": self.notes,
            "mask_encodings": dict(sorted(self.mask_encodings.items())),
            "skipped": self.skipped, "duplicates": self.duplicates, "patients_merged": self.patients_merged,
            "near_duplicates": {"max_distance_bits": NEAR_DUPLICATE_MAX_BITS, "scope": "different patients",
                                "total": self.near_duplicates_total, "pairs": self.near_duplicates},
            "label_conflicts": {"max_distance_bits": NEAR_DUPLICATE_MAX_BITS,
                                "scope": "near-duplicates of different patients whose classes differ",
                                "policy": self.label_conflicts_policy, "total": self.label_conflicts_total,
                                "by_distance": {str(k): v for k, v in self.label_conflicts_by_distance.items()},
                                "pairs": self.label_conflicts, "dropped": self.label_conflicts_dropped},
            "bad_values": self.bad_values,
        }

    def _conflict_action(self) -> str:
        """What was done with the label conflicts, for the printed section's title."""
        if self.label_conflicts_policy == "drop":
            return f"{len(self.label_conflicts_dropped)} case(s) dropped, --label-conflicts drop"
        return "all kept, --label-conflicts drop drops them"

    def format(self) -> str:
        """The printed summary: counts per class and split, then what was skipped and why, duplicates, notes."""
        from nnunet_mtl.dataset.writer import format_summary

        lines = [f"{self.converter}: {self.source} -> {self.dataset}"]
        if self.summary:
            lines.append(format_summary(self.summary))
        n_added = sum(sum(v.values()) for k, v in self.added.items() if k != "classes")
        lines.append(f"added {n_added} case(s) in {self.seconds:.1f} s")

        def section(title: str, items: list[str], total: int | None = None):
            total = len(items) if total is None else total
            lines.append(f"{title}: {total if total else 'none'}")
            lines.extend("  " + s for s in items[:PRINT_LIMIT])
            if total > min(len(items), PRINT_LIMIT):
                lines.append(f"  ... {total - min(len(items), PRINT_LIMIT)} more in {REPORT_FILE}")

        section("skipped", [f"{s['case']}: {s['reason']}" for s in self.skipped])
        section("exact duplicates", [f"{', '.join(d['cases'])}: {d['action']}" for d in self.duplicates])
        section("patients merged (identical images under two patient ids: one person)",
                [f"{', '.join(m['patients'])} -> patient_id {m['into']} ({len(m['cases_moved'])} case(s) moved; "
                 f"identical: {', '.join(m['identical_images'][:3])}"
                 f"{', ...' if len(m['identical_images']) > 3 else ''})" for m in self.patients_merged])
        section(f"near-duplicates of different patients (dHash <= {NEAR_DUPLICATE_MAX_BITS} bits, listed only)",
                [f"{p['a']} ~ {p['b']} ({p['distance']} bits)" for p in self.near_duplicates],
                self.near_duplicates_total)
        by_distance = ", ".join(f"{bits} bits: {n}" for bits, n in sorted(self.label_conflicts_by_distance.items()))
        section(f"label conflicts (near-duplicates whose classes differ; {self._conflict_action()}"
                + (f"; pairs at {by_distance}" if by_distance else "") + ")",
                [f"{p['a']} ({p['classes'][0]}) ~ {p['b']} ({p['classes'][1]}) ({p['distance']} bits)"
                 for p in self.label_conflicts], self.label_conflicts_total)
        section("bad clinical values (left empty)",
                [f"{b['case']} {b['column']}={b['value']!r}: expected {b['expected']}" for b in self.bad_values])
        if self.mask_encodings:
            from nnunet_mtl.dataset.writer import MASK_ENCODINGS
            lines.append("mask files read as: " + "; ".join(
                f"{n} {encoding} ({MASK_ENCODINGS.get(encoding, encoding)})"
                for encoding, n in sorted(self.mask_encodings.items(), key=lambda kv: -kv[1])))
        for note in self.notes:
            lines.append(f"note: {note}")
        if self.path is not None:
            lines.append(f"wrote {self.path} (report: {REPORT_FILE})")
        return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def write_report(path: Path, report: ConversionReport) -> None:
    """Write ``report`` to ``path`` (:data:`REPORT_FILE` in the dataset folder) as ``{"conversions": [...]}``:
    appended to the conversions already listed there (``--add-to-existing`` copied the existing dataset's
    report along; an unreadable one is replaced)."""
    runs = []
    if path.is_file():  # --add-to-existing: the existing dataset's report was copied along
        try:
            runs = list(json.loads(path.read_text()).get("conversions", []))
        except (json.JSONDecodeError, AttributeError):
            runs = []
    runs.append(report.to_dict())
    path.write_text(json.dumps({"conversions": runs}, indent=1) + "\n")
