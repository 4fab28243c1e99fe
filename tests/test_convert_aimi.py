"""Stanford AIMI thyroid cine-clip converter: an HDF5 fixture with the published dataset names (annot_id as bytes
with a trailing underscore, frame_num, one frame per index, clips stored out of frame order), metadata.csv with a
bad age, a clip without metadata, an empty-mask frame; frame subsampling, both targets, streaming reads, the
ThyroidXL -> AIMI external-test protocol with nnU-Net's integrity check, the CLI."""
from __future__ import annotations

import csv
import pickle
from functools import partial

import h5py
import numpy as np
import pytest

from dataset_conversion import aimi
from dataset_conversion.aimi import HDF5Frames, annot_key, convert_aimi
from dataset_conversion.thyroid_xl import convert_thyroid_xl
from nnunet_mtl.cli.main import main
from nnunet_mtl.dataset.contract import load_raw_dataset
from nnunet_mtl.errors import NnunetMtlError
from tests.convert_helpers import convert_options, nnunet_verify, thyroid_opts

SHAPE = (32, 40)
# (annot_id as stored, frame_num order in the file); clip 2 is stored out of order, clip 4 has no metadata row
CLIPS = [(b"1_", [0, 1, 2, 3]), (b"2_", [3, 1, 0, 2]), (b"3_", [0, 1, 2, 3]), (b"4_", [0, 1])]
EMPTY = ("3", 2)  # clip 3, frame 2: an empty mask
METADATA = [  # annot_id, age, ti-rads_level, histopath_diagnosis
    ("1", "50", "4", "0"), ("2", "2005", "5", "1"), ("3_", "61", "3", "0"), ("9", "70", "2", "0")]
HEADER = ["annot_id", "age", "sex", "location", "size_x", "size_y", "size_z", "ti-rads_level", "ti-rads_composition",
          "ti-rads_echogenicity", "ti-rads_shape", "ti-rads_margin", "ti-rads_echogenicfoci", "histopath_diagnosis"]


_opts = partial(convert_options, dataset_id=606, name="AIMIThyroid", split="test")


def write_aimi(folder, clips=CLIPS, shape=SHAPE, metadata=METADATA):
    folder.mkdir(parents=True, exist_ok=True)
    annots = [a for a, frames in clips for _ in frames]
    frame_nums = [f for _, frames in clips for f in frames]
    n = len(annots)
    with h5py.File(folder / "dataset.hdf5", "w") as f:
        image = f.create_dataset("image", (n, *shape), np.uint8, chunks=(1, *shape))
        mask = f.create_dataset("mask", (n, *shape), np.uint8, chunks=(1, *shape))
        for i, (a, fn) in enumerate(zip(annots, frame_nums)):
            image[i] = np.random.default_rng(i).integers(0, 256, shape, dtype=np.uint8)
            m = np.zeros(shape, np.uint8)
            if (annot_key(a), fn) != EMPTY:
                m[5:15, 8 + fn:20 + fn] = 255
            mask[i] = m
        f.create_dataset("annot_id", data=np.array(annots, dtype="S"))
        f.create_dataset("frame_num", data=np.array(frame_nums, dtype=np.int64))
    with open(folder / "metadata.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(HEADER)
        for annot, age, level, histo in metadata:
            w.writerow([annot, age, "F", "right", "1.2", "0.9", "1.0", level, "solid", "hypoechoic",
                        "wider-than-tall", "smooth", "none", histo])
    return folder


@pytest.fixture
def aimi_src(tmp_path):
    return write_aimi(tmp_path / "AIMI")


def _case_ids(report):
    return list(load_raw_dataset(report.path).cases["case_id"])


def test_aimi_tirads_default(aimi_src, tmp_path):
    report = convert_aimi(aimi_src, _opts(), raw_root=tmp_path / "raw")
    raw = load_raw_dataset(report.path)
    assert raw.class_labels == {"TR1": 0, "TR2": 1, "TR3": 2, "TR4": 3, "TR5": 4}
    assert report.added["test"] == {"TR1": 0, "TR2": 0, "TR3": 3, "TR4": 4, "TR5": 4}
    assert raw.dataset_json["numTraining"] == 0
    cases = raw.cases.set_index("case_id")
    assert set(cases["patient_id"]) == {"1", "2", "3"}  # annot_id without its '_', also from a '3_' csv cell
    assert cases.at["aimi_2_f0003", "hdf5_index"] == "4" and cases.at["aimi_2_f0003", "frame_num"] == "3"
    assert cases.at["aimi_2_f0000", "age"] == "" and cases.at["aimi_1_f0000", "age"] == "50"
    assert cases.at["aimi_1_f0000", "ti_rads_composition"] == "solid"
    assert raw.spacing_mm("aimi_1_f0000") is None
    assert [(b["case"], b["column"], b["value"]) for b in report.bad_values] == [("aimi_2", "age", "2005")]
    reasons = {s["case"]: s["reason"] for s in report.skipped}
    assert "no row in metadata.csv" in reasons["aimi_4 (2 frames)"] and len(reasons) == 2
    assert "lesion mask is empty" in reasons["aimi_3_f0002"]
    assert any("1 metadata.csv row(s) without frames" in n for n in report.notes)


def test_aimi_every_kth_frame_and_malignancy(aimi_src, tmp_path):
    report = convert_aimi(aimi_src, _opts(), target="malignancy", every_kth_frame=2, raw_root=tmp_path / "raw")
    # frames 0 and 2 of each clip in frame_num order (clip 2 is stored 3, 1, 0, 2); clip 3 frame 2 is empty
    assert _case_ids(report) == ["aimi_1_f0000", "aimi_1_f0002", "aimi_2_f0000", "aimi_2_f0002", "aimi_3_f0000"]
    assert report.added["test"] == {"benign": 3, "malignant": 2}
    with pytest.raises(NnunetMtlError, match="--every-kth-frame 0"):
        convert_aimi(aimi_src, _opts(), every_kth_frame=0, raw_root=tmp_path / "raw2")


def test_aimi_streams_frames(aimi_src, tmp_path, monkeypatch):
    """Every read of the HDF5 file is one frame (image / mask) or one slice of the 1D index arrays."""
    reads = []
    original = h5py.Dataset.__getitem__

    def counting(self, key):
        out = original(self, key)
        reads.append((self.name, int(np.asarray(out).size)))
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    monkeypatch.setattr(aimi, "INDEX_CHUNK", 5)
    report = convert_aimi(aimi_src, _opts(), raw_root=tmp_path / "raw")
    largest = {}
    for name, size in reads:
        largest[name] = max(largest.get(name, 0), size)
    frame = SHAPE[0] * SHAPE[1]
    assert largest == {"/image": frame, "/mask": frame, "/annot_id": 5, "/frame_num": 5}
    assert sum(1 for name, _ in reads if name == "/image") == 12  # each kept frame once; clip 4 never read
    assert len(_case_ids(report)) == 11
    loader = HDF5Frames()
    loader(type("C", (), {"image": (str(aimi_src / "dataset.hdf5"), 0), "source": "x"})())
    assert loader._file is not None
    assert pickle.loads(pickle.dumps(loader))._file is None  # the open handle does not travel to workers
    loader.close()


def test_aimi_as_external_test_of_thyroid_xl_and_nnunet_verify(thyroid_src, aimi_src, tmp_path):
    root = tmp_path / "raw"
    convert_thyroid_xl(thyroid_src, thyroid_opts(split="train"), raw_root=root)
    report = convert_aimi(aimi_src, _opts(dataset_id=605, add_to_existing=True, num_processes=2), raw_root=root)
    assert report.path == root / "Dataset605_ThyroidXL"
    raw = load_raw_dataset(report.path)
    assert raw.dataset_json["numTraining"] == 5 and raw.dataset_json["numTest"] == 11
    assert raw.cases_in_split("test")["case_id"].str.startswith("aimi_").all()
    nnunet_verify(report.path)


def test_aimi_wrong_folder_bad_file_and_cli(aimi_src, tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NnunetMtlError) as e:
        convert_aimi(empty, _opts(), raw_root=tmp_path / "raw")
    assert "\n" not in str(e.value) and "does not look like the Stanford AIMI" in str(e.value)
    assert "dataset.hdf5 (datasets image, mask, annot_id, frame_num" in str(e.value)
    broken = tmp_path / "broken"
    write_aimi(broken)
    with h5py.File(broken / "dataset.hdf5", "a") as f:
        del f["frame_num"]
    with pytest.raises(NnunetMtlError, match="has no dataset frame_num; expected dataset.hdf5"):
        convert_aimi(broken, _opts(), raw_root=tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    assert main(["convert", "AIMI", str(aimi_src), "-d", "626", "--no-progress", "--every-kth-frame", "3"]) == 0
    out = capsys.readouterr().out
    assert "Dataset626_AIMIThyroid" in out and "skipped: 1" in out  # clip 4; frames 0 and 3 of clips 1-3 kept
    raw = load_raw_dataset(tmp_path / "raw" / "Dataset626_AIMIThyroid")
    assert raw.dataset_json["numTest"] == 6 and raw.dataset_json["numTraining"] == 0


def test_near_duplicate_pairs_counted_in_bounded_blocks(monkeypatch):
    """Cine frames of one scanner hash alike across clips: the shared search counts every pair and keeps the first
    REPORT_LIST_LIMIT, block by block, with the same result as comparing all pairs at once."""
    from dataset_conversion import duplicates

    rng = np.random.default_rng(0)
    base = rng.integers(0, 2 ** 63, 20, dtype=np.uint64)
    hashes = [int(base[i % 20]) ^ (1 << int(rng.integers(0, 64))) for i in range(1500)]
    groups = [str(i % 37) for i in range(1500)]
    h = np.array(hashes, dtype=np.uint64)
    dist = np.bitwise_count(h[:, None] ^ h[None, :])
    g = np.array(groups)
    ii, jj = np.nonzero((dist <= duplicates.NEAR_DUPLICATE_MAX_BITS) & (g[:, None] != g[None, :]))
    expected = [(i, j, int(dist[i, j])) for i, j in zip(ii.tolist(), jj.tolist()) if i < j]
    monkeypatch.setattr(duplicates, "PAIR_BLOCK_BYTES", 32 * 1500 * 7)  # 7 rows a block: many blocks
    total, pairs = duplicates.near_duplicate_pairs(hashes, groups)
    assert total == len(expected) > duplicates.REPORT_LIST_LIMIT
    assert pairs == expected[:duplicates.REPORT_LIST_LIMIT]
    assert duplicates.near_duplicate_pairs(hashes, groups, limit=3) == (total, expected[:3])
