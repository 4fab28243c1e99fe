"""Multi-GPU (nnU-Net's -num_gpus N, DDP) needs CUDA and NCCL, which CI does not have; what our trainers add to a
DDP epoch is the reduction of their per-step values over the ranks. Here two CPU processes (gloo) each hold half
of an epoch's outputs, and the per-epoch numbers must equal those of one process holding all of them."""
import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from nnunet_mtl.trainers.mtl import epoch_means, validation_classification

pytestmark = pytest.mark.slow  # trains or starts processes (the fast subset leaves it out)

CLASSES = ["benign", "malignant", "normal"]


def epoch_outputs(seed=0, steps=6, batch=3):
    rng = np.random.default_rng(seed)
    outputs = []
    for _ in range(steps):
        probs = rng.dirichlet(np.ones(3), size=batch)
        outputs.append({"seg_loss": np.asarray(rng.random()), "cls_loss": np.asarray(rng.random()),
                        "cls_probs": list(probs), "cls_target": list(rng.integers(0, 3, size=batch))})
    return outputs


def collate(outputs):
    from nnunetv2.utilities.collate_outputs import collate_outputs
    return collate_outputs(outputs)


def summary(outputs):
    collated = collate(outputs)
    scores = validation_classification(collated, CLASSES)
    return {**epoch_means(collated, ["seg_loss", "cls_loss"]),
            **{k: scores[k] for k in ("auc", "macro_f1", "balanced_accuracy", "num_cases")}}


def _rank(rank, world, init_file, queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        outputs = epoch_outputs()
        half = outputs[rank::world]  # nnU-Net's ranks draw their own batches
        queue.put((rank, summary(half)))
    finally:
        dist.destroy_process_group()


def run_ranks(target, tmp_path, world: int = 2, timeout: float = 120) -> list:
    """Start ``world`` spawned processes ``target(rank, world, init_file, queue)``; what each put on the queue,
    once all exited cleanly."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, world, str(tmp_path / "init"), queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def test_two_ranks_give_the_numbers_of_one_process(tmp_path):
    results = dict(run_ranks(_rank, tmp_path))
    single = summary(epoch_outputs()[0::2] + epoch_outputs()[1::2])
    for rank in range(2):
        assert results[rank]["num_cases"] == 18
        for key, value in single.items():
            assert results[rank][key] == pytest.approx(value, rel=1e-12), key
    # and one rank alone would have given other numbers: the reduction is what makes them equal
    assert summary(epoch_outputs()[0::2])["auc"] != pytest.approx(single["auc"])


def _prior_rank(rank, world, init_file, queue):
    import torch
    from nnunet_mtl.methods.birads_consistency import BIRADSPrior
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        prior = BIRADSPrior()
        values = torch.tensor([[2.0, 0.5], [3.0, 1.0]]) if rank == 0 else torch.tensor([[1.0, 2.0]])
        prior.update(values)
        prior.update(values * 2 if rank == 0 else torch.zeros(0, 2))  # rank 1 has no lesion patch this time
        queue.put((rank, prior.running_min.tolist(), prior.running_max.tolist()))
    finally:
        dist.destroy_process_group()


def test_the_birads_running_statistics_are_the_same_on_every_rank(tmp_path):
    """Zhang, Moradi, Saha's running min/max of R and T: each batch's extremes are all-reduced over the ranks, so
    DDP's broadcast of rank 0's buffers changes nothing and the statistics are those of the whole batch."""
    results = {r: (lo, hi) for r, lo, hi in run_ranks(_prior_rank, tmp_path)}
    # first batch over both ranks: min (1, 0.5), max (3, 2); second (rank 0 only): min (4, 1), max (6, 2)
    expected_min = [0.99 * 1 + 0.01 * 4, 0.99 * 0.5 + 0.01 * 1]
    expected_max = [0.99 * 3 + 0.01 * 6, 0.99 * 2 + 0.01 * 2]
    for rank in range(2):
        assert results[rank][0] == pytest.approx(expected_min) and results[rank][1] == pytest.approx(expected_max)


def every_output_losses(outputs):
    """Toy seg and cls losses that reach every parameter (DDP reduces a bucket only when all its parameters got
    a gradient, as nnU-Net's deep-supervision loss gives them)."""
    seg = outputs["seg"] if isinstance(outputs["seg"], (list, tuple)) else [outputs["seg"]]
    return {"seg": sum(s.square().mean() for s in seg), "cls": outputs["logits"].square().mean()}


def uw_step_gradient(rank: int, wrap=lambda net: net) -> list:
    """The gradient of uncertainty weighting's log-variances after one step of the rule on half ``rank`` of a
    fixed batch, the network (the same initial weights every call) wrapped by ``wrap`` (DDP or nothing)."""
    import torch

    from nnunet_mtl.methods.multitask import BottleneckMLPConfig
    from nnunet_mtl.methods.uncertainty_weighting import UncertaintyWeighting
    from nnunet_mtl.networks.multitask_unet import MultitaskUNet
    from tests.network_helpers import make_unet
    rule = UncertaintyWeighting()
    torch.manual_seed(0)
    config = BottleneckMLPConfig(num_classes=3, hidden=16, embed_dim=8, dropout=0.0,
                                 loss_modules=rule.loss_modules(["seg", "cls"]))
    net = MultitaskUNet(make_unet(), config).double().eval()  # eval: no batch-norm statistics to sync
    data = torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rule(wrap(net), data[2 * rank:2 * rank + 2], every_output_losses, {"seg": 1.0, "cls": 1.0}, tasks=("seg", "cls"))
    return net.head.loss_modules["uncertainty"].log_variances.grad.tolist()


def _uw_rank(rank, world, init_file, queue):
    """One rank of uncertainty weighting under DDP: its own half of the data; the rule's step through DDP."""
    from torch.nn.parallel import DistributedDataParallel
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        queue.put((rank, uw_step_gradient(rank, DistributedDataParallel)))
    finally:
        dist.destroy_process_group()


def test_uncertainty_weighting_log_variances_get_the_mean_gradient_of_the_ranks(tmp_path):
    """Kendall et al. 2018's s_t live in the head, outside the forward pass; DDP still averages their gradients
    over the ranks (what ddp_reducer = True promises), to the gradient of one process holding both halves."""
    results = dict(run_ranks(_uw_rank, tmp_path, timeout=180))
    assert results[0] == pytest.approx(results[1], rel=1e-12)
    halves = [np.asarray(uw_step_gradient(rank)) for rank in range(2)]
    assert results[0] == pytest.approx(((halves[0] + halves[1]) / 2).tolist(), rel=1e-10)
    assert not np.allclose(halves[0], halves[1])  # the ranks' own gradients differ: the averaging is real


# ------------------------------------------- steps DDP's reducer cannot take: the trainer averages the gradients
SCENARIOS = ("rlar", "upgrad", "frozen_encoder")


def scenario_step(name: str, data, wrap=None) -> dict:
    """One step of scenario ``name`` on ``data`` with the trainer's step function (``rule_step``) on a fresh, seeded
    network: wrapped by ``wrap`` (DDP, the gradients averaged by the trainer) or not (one process). {parameter
    name: its gradient as a list, or None}."""
    from nnunet_mtl.methods.gradient_aggregation import TorchJDAggregation
    from nnunet_mtl.methods.rlar import RLAR
    from nnunet_mtl.seams.backward import WeightedSum
    from nnunet_mtl.seams.distributed import averages_gradients_itself, rule_step
    from nnunet_mtl.seams.stages import Stage
    from nnunet_mtl.seams.terms import TermLosses
    from tests.network_helpers import small_net

    net = small_net().eval()  # eval: the head's dropout is 0; no batch-norm anywhere
    wrapped = wrap(net) if wrap else net
    stages = (Stage("all"),)
    if name == "rlar":  # the written-out path (acts_on), as the trainer runs it
        rule = RLAR(layer="bottleneck", adv_weight=0.5)

        def losses(outputs):
            return TermLosses({"seg": outputs["seg"][0].square().mean(), "cls": outputs["logits"].square().mean()},
                              {"seg": ("segmentation",), "cls": ("classification",)})
    else:
        losses = every_output_losses
        if name == "upgrad":
            rule = TorchJDAggregation(aggregator="upgrad")
            rule.validate()
        else:  # a stage that trains the decoder and the head only (the frozen encoder gets no gradient)
            rule, stages = WeightedSum(), (Stage("decoder and head", trainable=("decoder", "head")),)
            keep = {id(p) for part in ("decoder", "head") for p in net.part_parameters(part)}
            for p in net.parameters():
                p.requires_grad_(id(p) in keep)  # after wrapping, as the trainer's stages do
    rule.setup(wrapped, lambda line: None)
    rule_step(rule, wrapped, data, losses, {"seg": 1.0, "cls": 1.0},
              average_itself=wrap is not None and averages_gradients_itself(rule, stages), tasks=("seg", "cls"))
    return {n: None if p.grad is None else p.grad.flatten().tolist() for n, p in net.named_parameters()}


def ddp_batch():
    import torch
    return torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _scenarios_rank(rank, world, init_file, queue):
    """One rank: each scenario's step on its own half of the batch, through DDP and the trainer's averaging."""
    from torch.nn.parallel import DistributedDataParallel
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        half = ddp_batch()[2 * rank:2 * rank + 2]
        queue.put((rank, {name: scenario_step(name, half, DistributedDataParallel) for name in SCENARIOS}))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_rank_steps(tmp_path_factory):
    """Every scenario's gradients on each of two gloo ranks (CPU), and in one process on each half and on both."""
    ranks = dict(run_ranks(_scenarios_rank, tmp_path_factory.mktemp("ddp"), timeout=300))
    data = ddp_batch()
    alone = {name: [scenario_step(name, data[2 * r:2 * r + 2]) for r in range(2)] for name in SCENARIOS}
    both = {"upgrad": scenario_step("upgrad", data)}  # one process holding both halves (TorchJD's reference)
    return ranks, alone, both


def gradients(step: dict) -> np.ndarray:
    """Every parameter's gradient of a step, concatenated (parameters without one left out)."""
    return np.concatenate([np.asarray(g) for g in step.values() if g is not None])


def test_rlar_under_ddp_gets_the_mean_of_the_ranks_single_process_steps(two_rank_steps):
    """Salama et al. 2026, Eq. 7 on two ranks: each rank's penalty is that of its own batch (as nnU-Net's per-rank
    losses); the parameter gradient every rank applies is the mean of the two single-process steps."""
    ranks, alone, _ = two_rank_steps
    mean = (gradients(alone["rlar"][0]) + gradients(alone["rlar"][1])) / 2
    for rank in range(2):
        assert np.allclose(gradients(ranks[rank]["rlar"]), mean, rtol=1e-9, atol=1e-12), rank
    assert not np.allclose(gradients(alone["rlar"][0]), gradients(alone["rlar"][1]))  # the averaging is real


def test_torchjd_under_ddp_aggregates_the_jacobian_of_the_whole_batch(two_rank_steps):
    """UPGrad (Quinton & Rey 2024, Eq. 5) on two ranks aggregates the mean of the ranks' Jacobians, i.e. the step of
    one process holding both halves (the task losses are batch means), not the mean of the ranks' aggregates."""
    ranks, alone, both = two_rank_steps
    whole = gradients(both["upgrad"])
    for rank in range(2):
        assert np.allclose(gradients(ranks[rank]["upgrad"]), whole, rtol=1e-9, atol=1e-12), rank
    mean_of_aggregates = (gradients(alone["upgrad"][0]) + gradients(alone["upgrad"][1])) / 2
    assert not np.allclose(mean_of_aggregates, whole, rtol=1e-6)  # the two readings differ: which one is pinned


def test_a_stage_that_freezes_the_encoder_trains_under_ddp(two_rank_steps):
    """A stage that trains the decoder and the head only (frozen after DDP wrapped the network, as the trainer's
    stages do): the trained parameters get the mean of the ranks' gradients, the frozen ones none."""
    ranks, alone, _ = two_rank_steps
    for rank in range(2):
        step = ranks[rank]["frozen_encoder"]
        assert all(g is None for n, g in step.items() if n.startswith("encoder."))
        assert step.keys() == alone["frozen_encoder"][0].keys()
        for name, g in step.items():
            if g is not None:
                expected = (np.asarray(alone["frozen_encoder"][0][name]) + np.asarray(alone["frozen_encoder"][1][name]))
                assert np.allclose(g, expected / 2, rtol=1e-9, atol=1e-12), name


def test_which_steps_the_trainer_averages_itself():
    from nnunet_mtl.methods.gradient_aggregation import TorchJDAggregation
    from nnunet_mtl.methods.rlar import RLAR
    from nnunet_mtl.methods.uncertainty_weighting import UncertaintyWeighting
    from nnunet_mtl.seams.backward import WeightedSum
    from nnunet_mtl.seams.distributed import averages_gradients_itself
    from nnunet_mtl.seams.stages import Stage
    plain, frozen = (Stage("all"),), (Stage("warm-up", trainable=("head",)), Stage("all"))
    assert not averages_gradients_itself(WeightedSum(), plain)
    assert not averages_gradients_itself(UncertaintyWeighting(), plain)
    assert averages_gradients_itself(WeightedSum(), frozen)
    assert averages_gradients_itself(RLAR(), plain) and averages_gradients_itself(TorchJDAggregation(), plain)
