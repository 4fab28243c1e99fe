"""Reading the CSV tables nnunet_mtl writes (class_predictions.csv, per_case.csv): rows with cells stripped of
surrounding spaces, one row per case, classes given by name or index. One line naming the file on anything else."""
from __future__ import annotations

import csv

from nnunet_mtl.errors import NnunetMtlError


def read_csv_rows(path, expected: str) -> tuple[list[str], list[dict]]:
    """(column names, rows) of a CSV file, names and cells stripped of surrounding spaces; one line naming the file
    and ``expected`` when it is not text."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except UnicodeDecodeError:
        raise NnunetMtlError(f"{path} is not a text CSV file; expected {expected}") from None
    return fields, rows


def rows_by_case(rows: list[dict], path) -> dict[str, dict]:
    """The rows with a case_id, by case id in file order; a case listed twice is one line naming the file."""
    out = {}
    for row in rows:
        case = row.get("case_id", "")
        if not case:
            continue
        if case in out:
            raise NnunetMtlError(f"{path} lists case {case} more than once; expected one row per case")
        out[case] = row
    return out


def class_index(value: str, names: list[str], what: str) -> int:
    """A class given by name, or by its index written as digits."""
    if value in names:
        return names.index(value)
    if value.isdigit() and int(value) < len(names):
        return int(value)
    raise NnunetMtlError(f"{what} is {value!r}; expected one of {', '.join(names)}")
