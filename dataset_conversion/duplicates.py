"""Exact duplicates, near-duplicates and label conflicts of a conversion: the hashes of a case's pixels, the
near-duplicate search, and :class:`Duplicates`, which applies the duplicate policies documented in
:mod:`dataset_conversion.driver` in the main process while the driver converts.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # annotations only
    from dataset_conversion.common import Case
    from dataset_conversion.driver import WrittenCase
    from dataset_conversion.report import ConversionReport

# dHash distance (of 64 bits) up to which two images are listed as near-duplicates. Measured on the real data:
# two acquisitions of one lesion in UDIAT are 6 and 8 bits apart; unrelated BrEaST images are 7+ bits apart (their
# common fan-shaped scan area makes the hashes alike), most 12+. 8 lists every re-acquisition found, at the cost of
# an occasional unrelated pair: the list is for a human to check, nothing is removed.
NEAR_DUPLICATE_MAX_BITS = 8
REPORT_LIST_LIMIT = 1000  # near-duplicate pairs listed in the report: the first in (i, j) order; the total is complete
PAIR_BLOCK_BYTES = 32 * 2 ** 20  # working memory of the near-duplicate search (XOR, popcount and test of one block)


# --- hashes ---------------------------------------------------------------------------------------------------
def pixel_digest(grey: np.ndarray) -> str:
    """Exact-duplicate key: a hash of the decoded pixels and the shape (not of the file: re-encoded copies of one
    image have different bytes but the same pixels)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(np.asarray(grey.shape, np.int64).tobytes())
    h.update(np.ascontiguousarray(grey).tobytes())
    return h.hexdigest()


def difference_hash(grey: np.ndarray) -> int:
    """64-bit dHash: the image box-averaged to 9x8, one bit per horizontally adjacent pair (left brighter than
    right). Robust to re-encoding, resizing and global brightness, so close hashes mean near-identical images."""
    from PIL import Image

    small = np.asarray(Image.fromarray(grey).resize((9, 8), Image.Resampling.BOX), dtype=np.int16)
    bits = (small[:, :-1] > small[:, 1:]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def near_duplicate_pairs(hashes: Sequence[int], groups: Sequence[str], max_bits: int = NEAR_DUPLICATE_MAX_BITS, *,
                         limit: int = REPORT_LIST_LIMIT) -> tuple[int, list[tuple[int, int, int]]]:
    """(number of pairs, the first ``limit`` pairs) of hashes at most ``max_bits`` apart whose ``groups``
    (patients) differ; a pair is (i, j, distance) with i < j, in (i, j) order (:func:`scan_near_duplicates`)."""
    scan = scan_near_duplicates(hashes, groups, max_bits=max_bits, limit=limit)
    return scan.total, scan.pairs


@dataclass
class PairScan:
    """What :func:`scan_near_duplicates` found: near-duplicate pairs and, among them, the label conflicts."""
    total: int = 0
    pairs: list = field(default_factory=list)            # the first ``limit`` pairs (i, j, distance)
    conflicts_total: int = 0
    conflicts: list = field(default_factory=list)        # the first ``limit`` pairs whose labels differ
    conflicts_by_distance: dict = field(default_factory=dict)  # bits -> conflicting pairs (all of them)
    in_conflict: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # per hash: in any conflict


def scan_near_duplicates(hashes: Sequence[int], groups: Sequence[str], labels: Sequence[str] | None = None, *,
                         max_bits: int = NEAR_DUPLICATE_MAX_BITS, limit: int = REPORT_LIST_LIMIT) -> PairScan:
    """Pairs of hashes at most ``max_bits`` apart whose ``groups`` (patients) differ, and among them those whose
    ``labels`` (classes) differ too: the label conflicts. Every pair is counted, the first ``limit`` of each kind
    (in (i, j) order, i < j) are listed, and every hash in a conflict is marked in ``in_conflict`` (what
    ``--label-conflicts drop`` needs, however many pairs there are).

    Pairs are counted in place, never collected: the frames of one scanner's cine clips share their layout and
    hash alike across clips (~150,000 pairs among 2,000 frames). Vectorised in row blocks (XOR + popcount) whose
    working memory stays under :data:`PAIR_BLOCK_BYTES` however many hashes: 20,000 images take about a second."""
    h = np.asarray([int(x) for x in hashes], dtype=np.uint64)
    g = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)[1]
    lab = None if labels is None else np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)[1]
    scan = PairScan(in_conflict=np.zeros(len(h), bool))
    by_distance = np.zeros(max_bits + 1, np.int64)
    # bytes per compared pair at worst: uint64 XOR, uint8 popcount, bool tests, two int64 indices of a hit
    rows = max(1, PAIR_BLOCK_BYTES // (32 * max(1, len(h))))
    for start in range(0, len(h), rows):
        stop = min(len(h), start + rows)
        dist = np.bitwise_count(h[start:stop, None] ^ h[None, start:])  # columns from `start`: only j >= i matter
        ii, jj = np.nonzero(dist <= max_bits)
        keep = (jj > ii) & (g[ii + start] != g[jj + start])
        ii, jj = ii[keep], jj[keep]
        scan.total += len(ii)
        _first_pairs(scan.pairs, ii, jj, start, dist, limit)
        if lab is not None:
            differ = lab[ii + start] != lab[jj + start]
            ci, cj = ii[differ], jj[differ]
            scan.conflicts_total += len(ci)
            scan.in_conflict[ci + start] = True
            scan.in_conflict[cj + start] = True
            by_distance += np.bincount(dist[ci, cj], minlength=max_bits + 1)[:max_bits + 1]
            _first_pairs(scan.conflicts, ci, cj, start, dist, limit)
    scan.conflicts_by_distance = {bits: int(n) for bits, n in enumerate(by_distance.tolist()) if n}
    return scan


def _first_pairs(into: list, ii: np.ndarray, jj: np.ndarray, start: int, dist: np.ndarray, limit: int) -> None:
    """Append the block's pairs (row ``ii`` + ``start``, column ``jj`` + ``start``) to ``into`` up to ``limit``."""
    if len(into) < limit:
        ii, jj = ii[:limit - len(into)], jj[:limit - len(into)]
        into.extend(zip((ii + start).tolist(), (jj + start).tolist(), dist[ii, jj].tolist()))


# --- the policy -----------------------------------------------------------------------------------------------
class Duplicates:
    """Exact-duplicate policy and near-duplicate listing (the policies of :mod:`dataset_conversion.driver`), in
    the main process: the driver calls :meth:`load_existing`, :meth:`admit` for each case written,
    :meth:`merge_patients` and :meth:`near_duplicates`."""

    def __init__(self, writer, report: ConversionReport, keep: bool = False):
        self.writer, self.report, self.keep = writer, report, keep
        self.first: dict[str, dict] = {}  # digest -> {"case_id", "split", "class", "existing"}
        self.groups: dict[str, dict] = {}  # digest -> report entry
        self.ambiguous: set[str] = set()
        self.kept: dict[str, tuple[str, int]] = {}  # case_id -> (patient, dhash)
        self.existing: set[str] = set()  # cases of the dataset before this conversion (--add-to-existing)
        # patients of this source that share an identical image: one person under two ids (BUS-UCLM files
        # CHCO_000-003 again as CHVI_005, 008, 009, 013), merged by merge_patients()
        self.same_patient: dict[str, str] = {}  # patient -> the patient it is merged into (union-find parent)
        self.patient_order: dict[str, int] = {}  # patient -> when it was first seen: the earliest names a group
        self.evidence: list[tuple[str, str, str, str]] = []  # (first case, its patient, copy, its patient)

    def load_existing(self) -> None:
        """Hashes of the cases already in the dataset (``--add-to-existing``): a copy of them is not added."""
        from PIL import Image

        from nnunet_mtl.dataset.writer import case_file_paths

        for row in self.writer.rows:
            with Image.open(case_file_paths(self.writer.tmp, row["case_id"], row["split"])[0]) as im:
                grey = np.asarray(im.convert("L"))
            # the first of identical copies already there (kept with --duplicates keep) names them
            self.first.setdefault(pixel_digest(grey), {"case_id": row["case_id"], "split": row["split"],
                                                       "class": row["class"], "existing": True})
            self.kept[row["case_id"]] = (row["patient_id"], difference_hash(grey))
            self.existing.add(row["case_id"])

    def admit(self, case: Case, split: str, done: WrittenCase) -> bool:
        """True: register the case. False: it was a duplicate; its files (and maybe the first copy's) are gone."""
        self.patient_order.setdefault(case.patient_id, len(self.patient_order))
        first = self.first.get(done.digest)
        if first is None:
            self.first[done.digest] = {"case_id": case.case_id, "split": split, "class": case.class_name,
                                       "existing": False, "patient": case.patient_id}
            self.kept[case.case_id] = (case.patient_id, done.dhash)
            return True
        group = self.groups.get(done.digest)
        if group is None:
            group = self.groups[done.digest] = {"cases": [first["case_id"]], "classes": [first["class"]]}
            self.report.duplicates.append(group)
        group["cases"].append(case.case_id)
        group["classes"].append(case.class_name)
        if not first["existing"] and first["patient"] != case.patient_id:
            self._union(first["patient"], case.patient_id)
            self.evidence.append((first["case_id"], first["patient"], case.case_id, case.patient_id))
        if self.keep and not first["existing"]:  # --duplicates keep: every copy of the source, as published
            classes = sorted(set(group["classes"]))
            group["action"] = "identical images, all kept (--duplicates keep)" + (
                f"; their classes differ ({', '.join(classes)})" if len(classes) > 1 else "")
            self.kept[case.case_id] = (case.patient_id, done.dhash)
            return True
        self.writer.remove_case(case.case_id, split)
        if first["existing"]:
            group["action"] = f"already in the dataset as {first['case_id']}; the new copy is skipped"
        elif done.digest in self.ambiguous or first["class"] != case.class_name:
            if done.digest not in self.ambiguous:  # drop the first copy too, once
                self.writer.remove_case(first["case_id"], first["split"])
                self.kept.pop(first["case_id"], None)
                self.ambiguous.add(done.digest)
            group["action"] = (f"identical images with different classes ({', '.join(sorted(set(group['classes'])))})"
                               f": all dropped as ambiguous")
        else:
            group["action"] = f"identical images of one class: {first['case_id']} kept, later copies skipped"
        return False

    def _root(self, patient: str) -> str:
        while self.same_patient.get(patient, patient) != patient:
            patient = self.same_patient[patient]
        return patient

    def _union(self, a: str, b: str) -> None:
        a, b = self._root(a), self._root(b)
        if a != b:
            first, later = sorted((a, b), key=self.patient_order.get)
            self.same_patient[later] = first

    def merge_patients(self) -> None:
        """Exact duplicates filed under two patient ids are one person: every kept case of the later-seen patient
        gets the earlier one's id (a patient-grouped split then keeps them in one fold), and the report says so.
        Only merges that change a kept case are reported (a copy dropped with its only image changes nothing)."""
        groups: dict[str, list[str]] = {}
        for patient in self.same_patient:
            groups.setdefault(self._root(patient), []).append(patient)
        for into, merged in sorted(groups.items(), key=lambda kv: self.patient_order[kv[0]]):
            moved = [row["case_id"] for row in self.writer.rows
                     if row["patient_id"] in merged and row["case_id"] in self.kept]
            if not moved:
                continue
            for case_id in moved:
                self.writer.set_patient(case_id, into)
                self.kept[case_id] = (into, self.kept[case_id][1])
            members = {into, *merged}
            pairs = [f"{a} = {b}" for a, pa, b, pb in self.evidence if pa in members and pb in members]
            self.report.patients_merged.append({"patients": sorted(members, key=self.patient_order.get),
                                                "into": into, "identical_images": pairs, "cases_moved": moved})

    def _scan(self, rows: dict[str, dict]) -> tuple[list[str], PairScan]:
        ids = list(self.kept)
        return ids, scan_near_duplicates([self.kept[c][1] for c in ids], [self.kept[c][0] for c in ids],
                                         [rows[c]["class"] for c in ids])

    def near_duplicates(self, label_conflicts: str = "keep") -> None:
        """List the near-duplicates of different patients and, among them, the label conflicts (classes differ);
        with ``label_conflicts`` "drop", drop every case of this conversion in a conflict first, so that the
        near-duplicates listed are those of the dataset written."""
        rows = {row["case_id"]: row for row in self.writer.rows}
        ids, scan = self._scan(rows)
        self.report.label_conflicts_policy = label_conflicts
        self.report.label_conflicts_total = scan.conflicts_total
        self.report.label_conflicts_by_distance = scan.conflicts_by_distance
        # closest first: a pair at 0 bits (the same scan, as in BUSI) before look-alikes of one scanner's layout
        self.report.label_conflicts = [{"a": ids[i], "b": ids[j], "distance": d,
                                        "classes": [rows[ids[i]]["class"], rows[ids[j]]["class"]]}
                                       for i, j, d in sorted(scan.conflicts, key=lambda pair: pair[2])]
        if label_conflicts == "drop" and scan.conflicts_total:
            spared = 0
            for index in np.flatnonzero(scan.in_conflict).tolist():
                case_id = ids[index]
                if case_id in self.existing:  # adding to a dataset never changes the cases already there
                    spared += 1
                    continue
                self.writer.remove_case(case_id, rows[case_id]["split"])
                del self.kept[case_id]
                self.report.label_conflicts_dropped.append(case_id)
            if spared:
                self.report.note(f"{spared} case(s) already in the dataset are in a label conflict: kept, as "
                                 f"--add-to-existing never changes them (only cases of this conversion are dropped)")
            ids, scan = self._scan(rows)
        self.report.near_duplicates_total = scan.total
        self.report.near_duplicates = [{"a": ids[i], "b": ids[j], "distance": d} for i, j, d in scan.pairs]
