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
    over the ranks (what supports_ddp = True promises), to the gradient of one process holding both halves."""
    results = dict(run_ranks(_uw_rank, tmp_path, timeout=180))
    assert results[0] == pytest.approx(results[1], rel=1e-12)
    halves = [np.asarray(uw_step_gradient(rank)) for rank in range(2)]
    assert results[0] == pytest.approx(((halves[0] + halves[1]) / 2).tolist(), rel=1e-10)
    assert not np.allclose(halves[0], halves[1])  # the ranks' own gradients differ: the averaging is real
