"""Bad input gives one clear line naming the thing and what was expected, a non-zero exit, nothing overwritten."""
import json

import pytest
import torch
from PIL import Image

from nnunet_mtl.cli.main import main
from tests.network_helpers import make_plans


def one_error_line(capsys, code):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch):
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / var).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var))
    return tmp_path


def fake_model(root, dataset="Dataset777_A", trained_on="Dataset777_A", trainer="nnUNetTrainerMTL"):
    folder = root / "nnUNet_results" / dataset / f"{trainer}__nnUNetPlans__2d"
    (folder / "fold_0").mkdir(parents=True)
    plans = make_plans()
    plans["dataset_name"] = dataset
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps({"file_ending": ".png", "class_labels": {"a": 0, "b": 1}}))
    other = dict(plans, dataset_name=trained_on)
    torch.save({"init_args": {"plans": other}, "network_weights": {}}, folder / "fold_0" / "checkpoint_final.pth")
    return folder


def predict_args(root, inputs, dataset="777"):
    return ["predict", "-i", str(inputs), "-o", str(root / "out"), "-d", dataset, "-c", "2d", "-f", "0",
            "-device", "cpu"]


def test_trainer_on_dataset_without_class_labels(nnunet_env):
    from nnunet_mtl.trainers.mtl import nnUNetTrainerMTL
    plans = make_plans()
    plans["continue_training"] = False
    dataset_json = {"labels": {"background": 0, "lesion": 1}, "channel_names": {"0": "US"}, "file_ending": ".png"}
    with pytest.raises(SystemExit, match="class_labels"):
        nnUNetTrainerMTL(plans, "2d", 0, dataset_json, torch.device("cpu"))


def test_predict_missing_dataset(nnunet_env, capsys):
    err = one_error_line(capsys, main(predict_args(nnunet_env, nnunet_env)))
    assert "777" in err and "Dataset777_" in err


def test_predict_untrained_model(nnunet_env, capsys):
    (nnunet_env / "nnUNet_results" / "Dataset777_A").mkdir()
    err = one_error_line(capsys, main(predict_args(nnunet_env, nnunet_env)))
    assert "nnUNetTrainerMTL__nnUNetPlans__2d" in err and "nnUNetv2_train" in err


def test_predict_checkpoint_of_another_dataset(nnunet_env, capsys):
    fake_model(nnunet_env, trained_on="Dataset001_Other")
    err = one_error_line(capsys, main(predict_args(nnunet_env, nnunet_env)))
    assert "Dataset001_Other" in err and "Dataset777_A" in err


def test_predict_unreadable_image(nnunet_env, capsys):
    fake_model(nnunet_env)
    inputs = nnunet_env / "in"
    inputs.mkdir()
    Image.new("L", (8, 8)).save(inputs / "ok_0000.png")
    (inputs / "broken_0000.png").write_bytes(b"\x89PNG not really")
    err = one_error_line(capsys, main(predict_args(nnunet_env, inputs)))
    assert "broken_0000.png" in err and "PNG" in err
    assert not (nnunet_env / "out").exists()  # nothing written before the inputs were checked


def test_predict_missing_fold(nnunet_env, capsys):
    fake_model(nnunet_env)
    code = main(predict_args(nnunet_env, nnunet_env)[:-4] + ["-f", "3", "-device", "cpu"])
    err = one_error_line(capsys, code)
    assert "fold_3" in err


def test_unset_environment_variable(monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_results", raising=False)
    err = one_error_line(capsys, main(["predict", "-i", "x", "-o", "y", "-d", "1", "-c", "2d"]))
    assert "nnUNet_results" in err


def test_split_on_missing_dataset(nnunet_env, capsys):
    err = one_error_line(capsys, main(["split", "-d", "123"]))
    assert "123" in err


def test_a_closed_pipe_ends_the_command_quietly():
    """``nnunet_mtl recipe show NAME | head``: when the reader goes away, no traceback, exit 141 (as SIGPIPE)."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "nnunet_mtl.cli.main", "recipe", "show", "synthetic"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child has imported anything, so its first write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
