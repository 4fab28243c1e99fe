"""The 13 radiomics targets (thyroid paper Sec. 2.2): against pyradiomics, shape sanity, our own definitions by
hand, the cache (recomputes only what changed) and training-fold standardization."""
import logging

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from nnunet_mtl.errors import NnunetMtlError
from nnunet_mtl.radiomics.cache import CACHE_NAME, compute_dataset_radiomics, load_targets, standardization
from nnunet_mtl.radiomics.features import (DEFAULT_FEATURES, PYRADIOMICS_FEATURES, aspect_ratio, edge_contrast,
                                           edge_sharpness, radiomics_targets)

YY, XX = np.mgrid[:96, :96]


def ellipse(cy=48, cx=48, ry=20, rx=20):
    return ((YY - cy) / ry) ** 2 + ((XX - cx) / rx) ** 2 < 1


def textured(mask, seed=0):
    rng = np.random.default_rng(seed)
    return (40 + 50 * rng.random(mask.shape) + 70 * mask).astype(np.uint8)


def test_the_paper_has_13_features():
    assert len(DEFAULT_FEATURES) == 13 and len(set(DEFAULT_FEATURES)) == 13


def test_pyradiomics_features_equal_pyradiomics_itself():
    """Every feature pyradiomics defines is pyradiomics' value on the same image and mask (an extractor built
    here independently, with the settings the README documents)."""
    import radiomics
    import SimpleITK as sitk
    from radiomics import featureextractor
    radiomics.setVerbosity(logging.ERROR)
    mask = ellipse(ry=25, rx=14) | ellipse(cy=30, cx=60, ry=8, rx=8)
    image = textured(mask, seed=1)
    ours = radiomics_targets(image, mask)
    extractor = featureextractor.RadiomicsFeatureExtractor(force2D=True, binCount=32)
    extractor.disableAllFeatures()
    extractor.enableFeatureClassByName("shape2D")
    extractor.enableFeatureClassByName("firstorder")
    extractor.enableFeatureClassByName("glcm")
    ref = extractor.execute(sitk.GetImageFromArray(image.astype(np.float32)[None]),
                            sitk.GetImageFromArray(mask.astype(np.uint8)[None]))
    for name, (cls, feat) in PYRADIOMICS_FEATURES.items():
        assert ours[name] == pytest.approx(float(ref[f"original_{cls}_{feat}"]), rel=1e-9, abs=1e-12), name
    # ellipticity (ours) from pyradiomics' own moment axes and area
    expected = float(ref["original_shape2D_PixelSurface"]) / (
        np.pi / 4 * float(ref["original_shape2D_MajorAxisLength"]) * float(ref["original_shape2D_MinorAxisLength"]))
    assert ours["ellipticity"] == pytest.approx(expected)


def test_shape_sanity():
    disk = radiomics_targets(textured(ellipse()), ellipse())
    assert disk["circularity"] > 0.9 and disk["elongation"] == pytest.approx(1.0, abs=0.02)
    assert disk["ellipticity"] == pytest.approx(1.0, abs=0.02) and disk["aspect_ratio"] == pytest.approx(1.0)
    tall = radiomics_targets(textured(ellipse(ry=30, rx=12)), ellipse(ry=30, rx=12))
    wide = radiomics_targets(textured(ellipse(ry=12, rx=30)), ellipse(ry=12, rx=30))
    assert tall["aspect_ratio"] > 2 and wide["aspect_ratio"] < 0.5  # taller-than-wide is > 1
    assert tall["circularity"] < disk["circularity"] and tall["elongation"] < 0.5
    # a lobulated outline fills less of its equal-moment ellipse than an ellipse does
    angle = np.arctan2(YY - 48, XX - 48)
    radius = np.hypot(YY - 48, XX - 48)
    star = radius < 22 + 8 * np.cos(6 * angle)
    assert radiomics_targets(textured(star), star)["ellipticity"] < 0.95


def test_aspect_ratio_is_rows_over_columns_of_the_extent():
    mask = np.zeros((20, 20), bool)
    mask[2:12, 5:9] = True  # 10 rows x 4 columns
    assert aspect_ratio(mask) == pytest.approx(2.5)


def test_edge_contrast_by_hand():
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    image = np.where(mask, 200.0, 50.0)
    from scipy import ndimage
    inner = mask.sum() - 14 * 14  # 3-px ring inside the 20x20 square
    outer = (ndimage.binary_dilation(mask, iterations=3) & ~mask).sum()  # 3-px ring outside (cross element)
    values = np.concatenate([np.full(inner, 200.0), np.full(outer, 50.0)])
    assert edge_contrast(image, mask) == pytest.approx((50 - 200) / (values.std() + 1e-6))
    assert edge_contrast(np.where(mask, 50.0, 200.0), mask) > 0  # darker lesion than surroundings: positive


def test_edge_sharpness_prefers_sharp_boundaries():
    from scipy import ndimage
    mask = ellipse()
    sharp = np.where(mask, 200.0, 50.0)
    blurred = ndimage.gaussian_filter(sharp, 4)
    assert edge_sharpness(sharp, mask) > 2 * edge_sharpness(blurred, mask)
    assert edge_sharpness(np.full(mask.shape, 90.0), mask) == pytest.approx(0.0, abs=1e-9)


def test_no_lesion_gives_nan_targets():
    values = radiomics_targets(np.zeros((32, 32), np.uint8), np.zeros((32, 32), bool))
    assert set(values) == set(DEFAULT_FEATURES) and all(np.isnan(v) for v in values.values())


def test_feature_list_is_configurable_and_checked():
    values = radiomics_targets(textured(ellipse()), ellipse(), ["aspect_ratio", "mean"])
    assert list(values) == ["aspect_ratio", "mean"]
    with pytest.raises(NnunetMtlError, match="unknown radiomics feature.*roundness"):
        radiomics_targets(textured(ellipse()), ellipse(), ["roundness"])


def _raw_dataset(root, n=6):
    """A minimal raw dataset (contract layout): n training cases, the last one without a lesion, one test case."""
    from nnunet_mtl.dataset.writer import RawDatasetWriter
    with RawDatasetWriter(900, "Radio", {"benign": 0, "malignant": 1}, raw_root=root) as w:
        for i in range(n):
            mask = ellipse(ry=10 + 2 * i, rx=14) if i < n - 1 else np.zeros(YY.shape, bool)
            w.add_case(f"c{i}", textured(mask, i), mask, split="train", class_name="benign" if i % 2 else "malignant",
                       patient_id=f"p{i}")
        w.add_case("t0", textured(ellipse(), 9), ellipse(), split="test", class_name="benign", patient_id="pt")
    return w.path


def test_cache_recomputes_only_what_changed(tmp_path):
    raw = _raw_dataset(tmp_path / "raw")
    cache = tmp_path / "pre" / CACHE_NAME
    table, computed = compute_dataset_radiomics(raw, cache, num_processes=1, progress=False)
    assert computed == 6 and list(table["case_id"]) == [f"c{i}" for i in range(6)]  # training cases only
    assert table["has_lesion"].tolist() == [1, 1, 1, 1, 1, 0]
    assert table.loc[5, list(DEFAULT_FEATURES)].isna().all()
    _, computed = compute_dataset_radiomics(raw, cache, num_processes=1, progress=False)
    assert computed == 0
    # change one mask: only that case is recomputed, and its targets change
    label = raw / "labelsTr" / "c1.png"
    Image.fromarray(ellipse(ry=30, rx=10).astype(np.uint8)).save(label)
    table2, computed = compute_dataset_radiomics(raw, cache, num_processes=1, progress=False)
    assert computed == 1
    assert table2.loc[1, "aspect_ratio"] > 2 and table2.loc[0, "aspect_ratio"] == table.loc[0, "aspect_ratio"]
    targets = load_targets(cache, DEFAULT_FEATURES)
    assert targets["c1"][DEFAULT_FEATURES.index("aspect_ratio")] == pytest.approx(table2.loc[1, "aspect_ratio"])
    with pytest.raises(NnunetMtlError, match="lacks feature"):
        load_targets(cache, ["glcm_imc2"])


def test_standardization_uses_training_fold_lesions_only():
    targets = {"a": np.array([1.0, 5.0]), "b": np.array([3.0, 5.0]), "n": np.array([np.nan, np.nan]),
               "val": np.array([100.0, -7.0])}
    mean, std = standardization(targets, ["a", "b", "n"])
    assert mean == pytest.approx([2.0, 5.0]) and std == pytest.approx([1.0, 1.0])  # constant feature: std 1
    with pytest.raises(NnunetMtlError, match="no training case"):
        standardization(targets, ["n"])


def test_radiomics_command(tmp_path, monkeypatch, capsys):
    from nnunet_mtl.cli.main import main
    raw_root = tmp_path / "raw"
    _raw_dataset(raw_root)
    monkeypatch.setenv("nnUNet_raw", str(raw_root))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    assert main(["radiomics", "-d", "900", "-np", "1"]) == 0
    out = capsys.readouterr().out
    assert "6 training cases (5 with a lesion), 6 computed now" in out
    # the dataset was never preprocessed: its preprocessed folder is made for the cache, and that is said
    assert "Dataset900_Radio is not preprocessed yet" in out
    table = pd.read_csv(tmp_path / "pre" / "Dataset900_Radio" / CACHE_NAME)
    assert len(table) == 6
    assert main(["radiomics", "-d", "900", "-np", "1"]) == 0
    assert "not preprocessed yet" not in capsys.readouterr().out


def test_a_dataset_without_any_lesion_outline_is_an_error_not_empty_targets(tmp_path, monkeypatch, capsys):
    """Every mask empty (e.g. lesions drawn as 255 and lost, or only normal images): the guidance trainers would have
    nothing to learn from; the command says so with exit 2 instead of a table of NaN and exit 0."""
    from nnunet_mtl.cli.main import main
    raw = _raw_dataset(tmp_path / "raw", n=3)
    for label in (raw / "labelsTr").glob("*.png"):
        Image.fromarray(np.zeros(YY.shape, np.uint8)).save(label)
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    assert main(["radiomics", "-d", "900", "-np", "1"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert last.startswith("nnunet_mtl radiomics: error: none of the 3 training cases of Dataset900_Radio has a "
                           "lesion"), last


def test_a_case_pyradiomics_rejects_is_left_out_not_fatal(tmp_path, monkeypatch, capsys):
    import nnunet_mtl.radiomics.cache as cache_module
    raw = _raw_dataset(tmp_path / "raw", n=3)

    def failing(image, mask, features):
        if mask.sum() > 0 and aspect_ratio(mask > 0) > 0.8:  # c1 (23 x 27 px); c0 is wider, c2 has no lesion
            raise ValueError("mask too small\nsecond line")
        return radiomics_targets(image, mask, features)

    monkeypatch.setattr(cache_module, "radiomics_targets", failing)
    monkeypatch.setattr(cache_module, "get_context", lambda method: __import__("multiprocessing").get_context("fork"))
    table, _ = compute_dataset_radiomics(raw, tmp_path / CACHE_NAME, num_processes=1, progress=False)
    assert table["has_lesion"].tolist() == [1, 0, 0]
    err = capsys.readouterr().err
    assert "c1 left out of the guidance loss (ValueError: mask too small)" in err


# ------------------------------------------------------------------------------------------------ partial masks
def _partial_dataset(root):
    """c0-c3: full masks with a lesion; c4: no mask (all ignore); c5: a box (ignore inside); c6: full, no lesion."""
    from nnunet_mtl.dataset.writer import RawDatasetWriter
    kinds = ["full"] * 4 + ["none", "box", "full"]
    with RawDatasetWriter(901, "RadioPartial", {"benign": 0, "malignant": 1}, raw_root=root) as w:
        for i, kind in enumerate(kinds):
            mask = ellipse(ry=10 + 3 * i, rx=14) if i < 6 else np.zeros(YY.shape, bool)
            w.add_case(f"c{i}", textured(mask, i), mask, split="train", class_name="benign" if i % 2 else "malignant",
                       patient_id=f"p{i}", mask_kind=kind)
        w.add_case("t0", textured(ellipse(), 9), ellipse(), split="test", class_name="benign", patient_id="pt")
    return w.path


def test_partially_annotated_cases_get_no_targets_and_are_never_computed(tmp_path):
    """Reading their label maps as masks would give the radiomics of the whole image (none) or of a rectangle
    (box): they are not computed, their rows say why, and the standardization comes from the full lesion cases."""
    raw = _partial_dataset(tmp_path / "raw")
    cache = tmp_path / "pre" / CACHE_NAME
    table, computed = compute_dataset_radiomics(raw, cache, num_processes=1, progress=False)
    assert computed == 5  # c0-c3 and c6; not c4, c5
    assert table["mask"].tolist() == ["full"] * 4 + ["none", "box", "full"]
    assert table["has_lesion"].tolist() == [1, 1, 1, 1, 0, 0, 0]
    assert table.loc[4:6, list(DEFAULT_FEATURES)].isna().all().all()
    from nnunet_mtl.radiomics.cache import describe_targets
    assert describe_targets(table) == "7 training cases (4 with a lesion, 2 partially annotated: no targets)"
    targets = load_targets(cache, DEFAULT_FEATURES)
    assert all(np.isnan(targets[k]).all() for k in ("c4", "c5", "c6"))
    mean, _ = standardization(targets, [f"c{i}" for i in range(7)])
    assert mean == pytest.approx(np.mean([targets[f"c{i}"] for i in range(4)], 0))
    _, computed = compute_dataset_radiomics(raw, cache, num_processes=1, progress=False)
    assert computed == 0


def test_a_stale_cache_row_of_a_partial_case_is_not_used(tmp_path):
    """A cache written before the case lost its mask (or by older code, which read the ignore label as lesion)
    holds numbers for it; neither the computation nor the loader may pass them on."""
    raw = _partial_dataset(tmp_path / "raw")
    cache = tmp_path / "pre" / CACHE_NAME
    compute_dataset_radiomics(raw, cache, num_processes=1, progress=False)
    stale = pd.read_csv(cache, dtype={"case_id": str, "input_hash": str})
    stale.loc[stale["case_id"] == "c4", list(DEFAULT_FEATURES)] = 1.0
    stale.drop(columns="mask").to_csv(cache, index=False)  # an old cache: no mask column, c4 computed as if full
    table, computed = compute_dataset_radiomics(raw, cache, num_processes=1, progress=False)
    assert computed == 0 and table.loc[4, list(DEFAULT_FEATURES)].isna().all()
    stale.to_csv(cache, index=False)  # finite numbers in a row whose mask is 'none': the loader drops them
    assert np.isnan(load_targets(cache, DEFAULT_FEATURES)["c4"]).all()
    # a cached row computed for a full mask is not reused once the case is marked full again after being 'none'
    stale.loc[stale["case_id"] == "c0", "mask"] = "none"
    stale.to_csv(cache, index=False)
    _, computed = compute_dataset_radiomics(raw, cache, num_processes=1, progress=False)
    assert computed == 1  # c0 again


def test_a_full_case_whose_label_map_holds_the_ignore_label_is_refused(tmp_path, monkeypatch):
    import nnunet_mtl.radiomics.cache as cache_module
    monkeypatch.setattr(cache_module, "get_context", lambda method: __import__("multiprocessing").get_context("fork"))
    raw = _partial_dataset(tmp_path / "raw")
    label = np.asarray(Image.open(raw / "labelsTr" / "c1.png")).copy()
    label[label == 1] = 2
    Image.fromarray(label).save(raw / "labelsTr" / "c1.png")
    with pytest.raises(NnunetMtlError, match="c1.png holds the ignore label.*case c1 has mask 'full'"):
        compute_dataset_radiomics(raw, tmp_path / CACHE_NAME, num_processes=1, progress=False)


def test_radiomics_command_counts_partial_cases(tmp_path, monkeypatch, capsys):
    from nnunet_mtl.cli.main import main
    _partial_dataset(tmp_path / "raw")
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    assert main(["radiomics", "-d", "901", "-np", "1"]) == 0
    assert "7 training cases (4 with a lesion, 2 partially annotated: no targets), 5 computed now, 0 from the " \
           "cache" in capsys.readouterr().out


def _guidance_setup(raw, tmp_path, train_keys, logged, with_raw=True):
    import torch
    from nnunet_mtl.dataset.case_table import CaseTable
    from nnunet_mtl.methods.clinical_guidance import ClinicalGuidance
    from nnunet_mtl.seams.terms import Setup
    cases = CaseTable.from_csv(raw / "cases.csv", {"benign": 0, "malignant": 1})
    term = ClinicalGuidance()
    term.validate()
    term.setup(Setup(cases=cases, train_keys=train_keys, class_names=["benign", "malignant"],
                     device=torch.device("cpu"), log=logged.append, preprocessed_folder=tmp_path / "pre",
                     raw_folder=raw if with_raw else None, dataset_name="Dataset901_RadioPartial", num_processes=1))
    return term, cases


def test_guidance_leaves_partial_cases_out_of_the_targets_the_statistics_and_the_loss(tmp_path):
    import torch
    from nnunet_mtl.seams.terms import Batch
    raw = _partial_dataset(tmp_path / "raw")
    (tmp_path / "pre").mkdir()
    logged = []
    train_keys = ["c0", "c1", "c2", "c4", "c5", "c6"]  # c3: the validation fold
    term, cases = _guidance_setup(raw, tmp_path, train_keys, logged)
    log = "\n".join(logged)
    assert "radiomics targets: 7 training cases (4 with a lesion, 2 partially annotated: no targets), 5 computed " \
           "now" in log
    assert "clinical guidance: 3 of 6 training cases of this fold have radiomics targets; 2 partially annotated " \
           "(mask box or none) have none and are left out of L_clin and of the standardization" in log
    raw_targets = load_targets(tmp_path / "pre" / CACHE_NAME, DEFAULT_FEATURES)
    mean = np.mean([raw_targets[k] for k in ("c0", "c1", "c2")], 0)  # the fold's full lesion cases only
    standardized = cases.column("radiomics")
    assert np.isnan(standardized["c4"]).all() and np.isnan(standardized["c5"]).all()
    assert np.mean([standardized[k] for k in ("c0", "c1", "c2")], 0) == pytest.approx(np.zeros(13), abs=1e-5)
    assert standardized["c3"] * np.std([raw_targets[k] for k in ("c0", "c1", "c2")], 0) + mean == \
        pytest.approx(raw_targets["c3"], rel=1e-5)
    # L_clin: the mean over the batch's cases with targets; 0, connected to the graph, when none has one
    embedding = torch.randn(3, 16, requires_grad=True)
    batch = Batch(data=torch.zeros(3, 1, 4, 4), target=torch.zeros(3, 1, 4, 4), keys=["c0", "c4", "c5"],
                  cases=cases)
    loss = term({"embedding": embedding}, batch)
    expected = ((embedding[0, :13] - torch.as_tensor(standardized["c0"])) ** 2).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert embedding.grad[1:].abs().max() == 0
    none = term({"embedding": embedding}, Batch(data=torch.zeros(2, 1, 4, 4), target=torch.zeros(2, 1, 4, 4),
                                               keys=["c4", "c5"], cases=cases))
    assert none.item() == 0.0 and none.requires_grad


def test_guidance_ignores_numbers_a_stale_cache_holds_for_partial_cases(tmp_path):
    """Without nnUNet_raw (or on a second GPU rank) the trainer reads the cache alone: the case table's mask kind,
    not the cache, decides which cases have targets."""
    raw = _partial_dataset(tmp_path / "raw")
    (tmp_path / "pre").mkdir()
    compute_dataset_radiomics(raw, tmp_path / "pre" / CACHE_NAME, num_processes=1, progress=False)
    stale = pd.read_csv(tmp_path / "pre" / CACHE_NAME, dtype={"case_id": str})
    stale.loc[stale["case_id"].isin(["c4", "c5"]), list(DEFAULT_FEATURES)] = 1.0
    stale.drop(columns=["mask"]).to_csv(tmp_path / "pre" / CACHE_NAME, index=False)
    logged = []
    _, cases = _guidance_setup(raw, tmp_path, [f"c{i}" for i in range(7)], logged, with_raw=False)
    standardized = cases.column("radiomics")
    assert np.isnan(standardized["c4"]).all() and np.isnan(standardized["c5"]).all()
    assert any("4 of 7 training cases of this fold have radiomics targets; 2 partially annotated" in line
               for line in logged)
