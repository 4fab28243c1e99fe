"""Instance normalization with a closed-form double backward (for RLAR's gradient penalty).

Why: RLAR differentiates the segmentation loss's gradient at z, so every instance norm between z and the output is
differentiated twice. PyTorch computes instance norm as batch norm on a (1, B*C, ...) view, and its double backward is
the composite ``batchnorm_double_backward``: measured over the benchmark plan's decoder shapes
(benchmarks/bench_instance_norm.py, 2-core CPU) 89 ms, against 18 ms for the closed form below. The forward pass and the
first backward stay PyTorch's own kernels (``native_batch_norm``, ``native_batch_norm_backward``), so the values are the
ones ``F.instance_norm`` gives.

The math, per (sample, channel) group of N elements (eps inside r):
    xhat = (x - mean) r,  r = 1 / sqrt(var + eps),  y = w xhat + b
    backward:  gx = w P(gy),  gw = sum gy xhat,  gb = sum gy,
               P(v) = r (v - mean(v) - xhat mean(v xhat))   (the transposed Jacobian of xhat; self-adjoint)
    double backward, given the upstream gradients u (of gx), uw (of gw), ub (of gb):
               d/d gy = w P(u) + uw xhat + ub
               d/d w  = sum P(u) gy
               d/d x  = -(r^2 S / N) xhat - P(q) + P(uw gy),  q = r (m u + mean(u xhat) w gy),
                        m = mean(w gy xhat),  S = sum u (w gy - mean(w gy) - xhat m)
d/d gy's main term w P(u) and the sums of u and u xhat are PyTorch's fused batch-norm backward applied to u; d/d x
is one per-group linear combination of x, u and gy (xhat folded into x), so each full-size result costs one pass.
With low-precision inputs (AMP) the group sums and coefficients are float32: sums of scaled gradients overflow
float16.
"""
from __future__ import annotations

import torch
from torch import nn

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _groups(t: torch.Tensor) -> torch.Tensor:
    """(B*C, N) view of a (B, C, *spatial) tensor."""
    return t.reshape(t.shape[0] * t.shape[1], -1)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, C): per-group dot product (torch.linalg.vecdot: measured faster than bmm and than (a * b).sum)."""
    return torch.linalg.vecdot(_groups(a), _groups(b)).view(a.shape[0], a.shape[1])


def _bc(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A (B, C) tensor shaped to broadcast against ``like`` (B, C, *spatial)."""
    return v.view(*v.shape, *([1] * (like.dim() - 2)))


def _combine(like: torch.Tensor, const: torch.Tensor, *terms: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """const + sum coef * tensor, with per-group (B, C) coefficients; one new full-size tensor."""
    out = torch.addcmul(_bc(const, like), terms[0][1], _bc(terms[0][0], like))
    for coef, tensor in terms[1:]:
        out.addcmul_(tensor, _bc(coef, like))
    return out


def _as_float(*tensors):
    """float16 / bfloat16 -> float32; float32 and float64 unchanged."""
    return [t.float() if t is not None and t.dtype in _LOW_PRECISION else t for t in tensors]


def _no_autocast(like: torch.Tensor):
    """Our float32 arithmetic must stay float32: autocast would cast some of it back to float16."""
    return torch.autocast(device_type=like.device.type, enabled=False)


class _InstanceNorm(torch.autograd.Function):
    """(x, weight, bias) -> (y, mean, invstd); mean and invstd (B, C) are returned for the decoder's hand-written
    data gradient and are not differentiable."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        b, c = x.shape[:2]
        x = x.contiguous()
        y, mean, invstd = torch.native_batch_norm(x.view(1, b * c, *x.shape[2:]), weight.repeat(b), bias.repeat(b),
                                                  None, None, True, 0.0, eps)
        mean, invstd = mean.view(b, c), invstd.view(b, c)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        ctx.mark_non_differentiable(mean, invstd)
        # _unsafe_view: a view made inside a Function may not be modified in place, and LeakyReLU(inplace) follows
        return torch.ops.aten._unsafe_view(y, x.shape), mean, invstd

    @staticmethod
    def backward(ctx, gy, _gmean, _ginvstd):
        x, weight, mean, invstd = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a backward that can itself be differentiated
            return (*InstanceNormBackward.apply(gy, x, weight, mean, invstd, ctx.eps), None)
        gx, gw, gb = _native_backward(gy, x, weight, mean, invstd, ctx.eps, ctx.needs_input_grad[:3])
        return gx, gw.sum(0) if gw is not None else None, gb.sum(0) if gb is not None else None, None


def _native_backward(g: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                     invstd: torch.Tensor, eps: float, wanted=(True, True, True)):
    """PyTorch's fused kernel: (w P(g), sum g xhat, sum g), the sums per (sample, channel) as (B, C) in the weight's
    dtype (the kernel accumulates in float32); None for what ``wanted`` leaves out."""
    b, c = x.shape[:2]
    gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
        g.contiguous().view(1, b * c, *x.shape[2:]), x.view(1, b * c, *x.shape[2:]), weight.repeat(b), None, None,
        mean.reshape(-1), invstd.reshape(-1), True, eps, list(wanted))
    return (gx.view(x.shape) if gx is not None else None, gw.view(b, c) if gw is not None else None,
            gb.view(b, c) if gb is not None else None)


class InstanceNormBackward(torch.autograd.Function):
    """(gy, x, weight; mean, invstd, eps) -> (gx, gw, gb): instance norm's backward (PyTorch's kernel) as a
    differentiable function whose own backward is the closed-form double backward of the module docstring."""

    @staticmethod
    def forward(ctx, gy, x, weight, mean, invstd, eps):
        ctx.eps = eps
        gy = gy.contiguous()
        gx, s_gxh, s_g = _native_backward(gy, x, weight, mean, invstd, eps)
        ctx.save_for_backward(gy, x, weight, mean, invstd, *_as_float(s_g, s_gxh))
        return gx, s_gxh.sum(0).to(weight.dtype), s_g.sum(0).to(weight.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, u, uw, ub):
        with _no_autocast(ctx.saved_tensors[1]):  # our float32 arithmetic stays float32
            return InstanceNormBackward._backward(ctx, u, uw, ub)

    @staticmethod
    def _backward(ctx, u, uw, ub):
        gy, x, weight, mean, r, s_g, s_gxh = ctx.saved_tensors
        n = x[0, 0].numel()
        u = torch.zeros_like(gy) if u is None else u.contiguous().to(gy.dtype)
        # d/dgy = w P(u) (+ the terms of uw, ub below), with the sums of u, from PyTorch's kernel
        g_gy, s_uxh, s_u = _native_backward(u, x, weight, mean, r, ctx.eps)
        (s_uxh, s_u), s_ug = _as_float(s_uxh, s_u), _dot(*_as_float(u, gy))
        u_mean, g_mean, ux_mean, gx_mean = s_u / n, s_g / n, s_uxh / n, s_gxh / n
        m = weight * gx_mean                                    # mean(a xhat), a = w gy
        s = weight * s_ug - weight * g_mean * s_u - m * s_uxh   # sum u (a - mean(a) - xhat m)
        r2 = r * r
        # d/dx = -(r^2 S / N) xhat - P(q), q = r (m u + mean(u xhat) a), written as c_xhat xhat + c_u u + c_gy gy + c_0
        c_xhat = -r2 * s / n + 2 * r2 * m * ux_mean
        c_u = -r2 * m
        c_gy = -r2 * ux_mean * weight
        c_0 = r2 * (m * u_mean + ux_mean * weight * g_mean)
        # d/dw = sum over batch and space of P(u) gy
        g_w = (r * (s_ug - u_mean * s_g - ux_mean * s_gxh)).sum(0)
        if uw is not None:  # gw = sum gy xhat: d/dgy += uw xhat, d/dx += P(uw gy)
            uw = _as_float(uw)[0].expand_as(r)
            g_gy = g_gy.addcmul_(x, _bc(uw * r, x)).sub_(_bc(uw * r * mean, x))
            c_gy, c_0, c_xhat = c_gy + r * uw, c_0 - r * uw * g_mean, c_xhat - r * uw * gx_mean
        if ub is not None:  # gb = sum gy: d/dgy += ub
            g_gy = g_gy.add_(_bc(_as_float(ub)[0].expand_as(r), x))
        # xhat = r x - r mean, folded into the coefficients: one pass over x instead of materializing xhat
        g_x = _combine(x, c_0 - c_xhat * r * mean, (c_xhat * r, x), (c_u, u), (c_gy, gy))
        return g_gy, g_x.to(x.dtype), g_w.to(weight.dtype), None, None, None


def instance_norm_with_stats(x: torch.Tensor, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``norm(x)`` for an affine instance norm without running statistics, plus its per-(sample, channel) mean and
    1/std; twice differentiable at the cost of the closed form above."""
    return _InstanceNorm.apply(x, norm.weight, norm.bias, norm.eps)


def supports_fast_instance_norm(norm: nn.Module) -> bool:
    return (isinstance(norm, nn.modules.instancenorm._InstanceNorm) and norm.affine
            and not norm.track_running_stats)


class _FastInstanceNorm:
    """Mixin: the forward of an instance norm module through :func:`instance_norm_with_stats` when gradients are
    recorded; the module's own forward otherwise (evaluation)."""

    def forward(self, x):
        if torch.is_grad_enabled():
            return instance_norm_with_stats(x, self)[0]
        return super().forward(x)


class FastInstanceNorm1d(_FastInstanceNorm, nn.InstanceNorm1d):
    pass


class FastInstanceNorm2d(_FastInstanceNorm, nn.InstanceNorm2d):
    pass


class FastInstanceNorm3d(_FastInstanceNorm, nn.InstanceNorm3d):
    pass


# module-level classes (not made with type()), so that a network holding them can still be pickled
_FAST_CLASSES = {nn.InstanceNorm1d: FastInstanceNorm1d, nn.InstanceNorm2d: FastInstanceNorm2d,
                 nn.InstanceNorm3d: FastInstanceNorm3d}


def use_fast_instance_norm(module: nn.Module) -> int:
    """Give every affine instance norm in ``module`` (without running statistics) the closed-form double backward,
    in place; parameters, state_dict keys and forward values stay the same. Returns how many were changed."""
    changed = 0
    for m in module.modules():
        fast = _FAST_CLASSES.get(type(m))
        if fast is not None and supports_fast_instance_norm(m):
            m.__class__ = fast
            changed += 1
    return changed
