"""nnunet_mtl overrides methods of nnU-Net's trainer and predictor, several of them private: it is tested with, and
pinned to, the nnunetv2 range in setup.cfg. When a newer nnU-Net changes an overridden method's parameters, this
test says which one, instead of a training that breaks halfway."""
import configparser
import inspect
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

PINNED_AGAINST = "2.8.1"
# (nnU-Net class, method) -> its parameters in nnunetv2 2.8.1, which our overrides were written against
OVERRIDDEN = {
    ("nnUNetTrainer", "__init__"): ["self", "plans", "configuration", "fold", "dataset_json", "device"],
    ("nnUNetTrainer", "_do_i_compile"): ["self"],
    ("nnUNetTrainer", "_set_batch_size_and_oversample"): ["self"],
    ("nnUNetTrainer", "build_network_architecture"): ["plans_manager", "configuration_manager", "num_input_channels",
                                                      "num_output_channels", "enable_deep_supervision"],
    ("nnUNetTrainer", "configure_optimizers"): ["self"],
    ("nnUNetTrainer", "configure_rotation_dummyDA_mirroring_and_inital_patch_size"): ["self"],
    ("nnUNetTrainer", "do_split"): ["self"],
    ("nnUNetTrainer", "get_dataloaders"): ["self"],
    ("nnUNetTrainer", "initialize"): ["self"],
    ("nnUNetTrainer", "load_checkpoint"): ["self", "filename_or_checkpoint"],
    ("nnUNetTrainer", "on_epoch_end"): ["self"],
    ("nnUNetTrainer", "on_train_epoch_end"): ["self", "train_outputs"],
    ("nnUNetTrainer", "on_train_epoch_start"): ["self"],
    ("nnUNetTrainer", "on_train_start"): ["self"],
    ("nnUNetTrainer", "on_validation_epoch_end"): ["self", "val_outputs"],
    ("nnUNetTrainer", "perform_actual_validation"): ["self", "save_probabilities"],
    ("nnUNetTrainer", "run_training"): ["self"],
    ("nnUNetTrainer", "save_checkpoint"): ["self", "filename"],
    ("nnUNetTrainer", "train_step"): ["self", "batch"],
    ("nnUNetTrainer", "validation_step"): ["self", "batch"],
    ("nnUNetPredictor", "__init__"): ["self", "tile_step_size", "use_gaussian", "use_mirroring",
                                      "perform_everything_on_device", "device", "verbose", "verbose_preprocessing",
                                      "allow_tqdm"],
    ("nnUNetPredictor", "_internal_maybe_mirror_and_predict"): ["self", "x"],
    ("nnUNetPredictor", "_internal_predict_sliding_window_return_logits"): ["self", "data", "slicers",
                                                                           "do_on_device"],
    ("nnUNetPredictor", "_manage_input_and_output_lists"): [
        "self", "list_of_lists_or_source_folder", "output_folder_or_list_of_truncated_output_files",
        "folder_with_segs_from_prev_stage", "overwrite", "part_id", "num_parts", "save_probabilities"],
    ("nnUNetPredictor", "initialize_from_trained_model_folder"): ["self", "model_training_output_dir", "use_folds",
                                                                  "checkpoint_name"],
    ("nnUNetPredictor", "manual_initialization"): ["self", "network", "plans_manager", "configuration_manager",
                                                   "parameters", "dataset_json", "trainer_name",
                                                   "inference_allowed_mirroring_axes"],
    ("nnUNetPredictor", "predict_from_data_iterator"): ["self", "data_iterator", "save_probabilities",
                                                        "num_processes_segmentation_export"],
    ("nnUNetPredictor", "predict_logits_from_preprocessed_data"): ["self", "data"],
    ("nnUNetPredictor", "predict_from_files"): ["self", "list_of_lists_or_source_folder",
                                               "output_folder_or_list_of_truncated_output_files", "save_probabilities",
                                               "overwrite", "num_processes_preprocessing",
                                               "num_processes_segmentation_export", "folder_with_segs_from_prev_stage",
                                               "num_parts", "part_id"],
    ("nnUNetPredictor", "predict_from_files_sequential"): ["self", "list_of_lists_or_source_folder",
                                                          "output_folder_or_list_of_truncated_output_files",
                                                          "save_probabilities", "overwrite",
                                                          "folder_with_segs_from_prev_stage"],
    # called by our predictor with these arguments (not overridden)
    ("nnUNetPredictor", "predict_sliding_window_return_logits"): ["self", "input_image"],
}


def our_overrides():
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_mtl.inference.predictor import MultitaskPredictor
    from nnunet_mtl.trainers import TRAINERS
    found = set()
    for cls, base in [*((c, nnUNetTrainer) for c in TRAINERS.values()), (MultitaskPredictor, nnUNetPredictor)]:
        for klass in cls.__mro__:
            if not klass.__module__.startswith("nnunet_mtl"):
                continue
            for name in vars(klass):
                if name != "__init_subclass__" and callable(getattr(base, name, None)):
                    found.add((base.__name__, name))
    return found


def test_every_override_is_recorded():
    unrecorded = sorted(our_overrides() - set(OVERRIDDEN))
    assert not unrecorded, f"record the nnU-Net signature of these overrides in OVERRIDDEN: {unrecorded}"


def test_overridden_methods_keep_the_signatures_we_were_written_against():
    import nnunetv2
    from importlib.metadata import version
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    classes = {"nnUNetTrainer": nnUNetTrainer, "nnUNetPredictor": nnUNetPredictor}
    installed = version("nnunetv2")
    changed = []
    for (cls, name), expected in OVERRIDDEN.items():
        method = getattr(classes[cls], name, None)
        found = None if method is None else list(inspect.signature(method).parameters)
        if found != expected:
            changed.append(f"{cls}.{name}: expected ({', '.join(expected)}), found "
                           f"{'no such method' if found is None else '(' + ', '.join(found) + ')'}")
    assert not changed, (f"nnunetv2 {installed} ({Path(nnunetv2.__file__).parent}) changed methods that nnunet_mtl "
                         f"overrides or calls (written against nnunetv2 {PINNED_AGAINST}): " + "; ".join(changed)
                         + ". Install the pinned range from setup.cfg, or update the overrides.")


def test_the_installed_nnunet_is_in_the_pinned_range():
    from importlib.metadata import version
    parser = configparser.ConfigParser()
    parser.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    requirements = [Requirement(line) for line in parser["options"]["install_requires"].split("\n") if line.strip()]
    pin = next(r for r in requirements if r.name == "nnunetv2")
    assert Version(PINNED_AGAINST) in pin.specifier and Version(version("nnunetv2")) in pin.specifier, \
        f"nnunetv2 {version('nnunetv2')} is outside the tested range {pin.specifier} of setup.cfg"
    assert not pin.specifier.contains("2.9.0"), "pin an upper bound: overrides of private methods may break"


def test_our_training_loop_calls_what_nnunets_calls():
    """The base trainer's run_training is nnU-Net's loop plus early stopping: nnU-Net's must still call exactly
    these hooks, in this order (a new hook there would be skipped by ours)."""
    import ast
    import textwrap

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from nnunet_mtl.trainers import nnUNetTrainerMTL

    def self_calls(function):
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                 and isinstance(n.func.value, ast.Name) and n.func.value.id == "self"]
        return [n.func.attr for n in sorted(calls, key=lambda n: (n.lineno, n.col_offset))]

    hooks = ["on_train_start", "on_epoch_start", "on_train_epoch_start", "train_step", "on_train_epoch_end",
             "on_validation_epoch_start", "validation_step", "on_validation_epoch_end", "on_epoch_end", "on_train_end"]
    assert self_calls(nnUNetTrainer.run_training) == hooks
    assert [c for c in self_calls(nnUNetTrainerMTL.run_training) if c in hooks] == hooks
