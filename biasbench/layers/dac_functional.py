"""DAC operators in pure PyTorch: output channels in chunks, recomputed in backward.

The obvious implementation expands the input out_channels-fold (`phi(z[:, None] + B)`, shape
(N, out, in, H, W)) and runs a grouped conv; autograd would then keep that expanded tensor for
backward, which is out_channels times a plain conv's activation memory. Here forward computes
the output a chunk of output channels at a time under no_grad, keeps only (z, W, B), and
backward recomputes each chunk with autograd enabled. Transient memory is bounded by
CHUNK_ELEMENTS; nothing expanded survives between forward and backward.

This is the portable fallback; `biasbench.kernels` has the fused C++ and Triton kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from biasbench.layers.dac_activation import ActivationFn

# Elements of the expanded chunk built at once (16M floats = 64 MB in float32): large enough
# that the grouped conv / einsum per chunk amortises its launch overhead, small next to a
# ResNet training step's activations.
CHUNK_ELEMENTS = 1 << 24


def _chunks(out_channels: int, per_channel: int, budget: int) -> list[slice]:
    step = max(1, min(out_channels, budget // max(per_channel, 1)))
    return [slice(s, min(s + step, out_channels)) for s in range(0, out_channels, step)]


def conv_chunk(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor, stride: int, padding: int,
               phi: ActivationFn) -> torch.Tensor:
    """DAC conv for the output channels in w/b (b shaped (oc, in) or (oc, in, k, k))."""
    n, c, h, wd = z.shape
    oc, _, k, _ = w.shape
    if b.dim() == 2:
        # Partially shared biases: the activated plane phi(z_j + B[i,j]) is built once per
        # (i, j) and the grouped conv reuses it for every tap; conv2d's zero padding comes
        # after the activation, as the spec requires.
        a = phi(z.unsqueeze(1) + b.view(1, oc, c, 1, 1))
        return F.conv2d(a.reshape(n, oc * c, h, wd), w, None, stride, padding, groups=oc)
    # Fully unshared biases B[i,j,a,b]: every tap has its own bias, so work on patches.
    # Padded patch entries are masked to zero *after* the activation (phi(B) would leak in).
    cols = F.unfold(z, k, padding=padding, stride=stride)  # (N, C*k*k, L)
    mask = F.unfold(z.new_ones(1, c, h, wd), k, padding=padding, stride=stride)  # (1, Ckk, L)
    a = phi(cols.unsqueeze(1) + b.reshape(1, oc, c * k * k, 1)) * mask.unsqueeze(1)
    out = torch.einsum("nokl,ok->nol", a, w.reshape(oc, c * k * k))
    ho = (h + 2 * padding - k) // stride + 1
    wo = (wd + 2 * padding - k) // stride + 1
    return out.reshape(n, oc, ho, wo)


def linear_chunk(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor, phi: ActivationFn) -> torch.Tensor:
    """f_i = sum_j W[i,j] phi(B[i,j] + z_j) for the output units in w/b; z is (N, in)."""
    return torch.einsum("noj,oj->no", phi(z.unsqueeze(1) + b.unsqueeze(0)), w)


class _ChunkedDAC(torch.autograd.Function):
    """Chunked forward, chunk-by-chunk recompute in backward (first derivatives only)."""

    @staticmethod
    def forward(ctx, z, weight, unshared_bias, kind, stride, padding, phi, budget):
        ctx.save_for_backward(z, weight, unshared_bias)
        ctx.conf = (kind, stride, padding, phi, budget)
        slices = _ChunkedDAC._slices(z, weight, unshared_bias, kind, stride, padding, budget)
        outs = [_ChunkedDAC._apply(z, weight[s], unshared_bias[s], kind, stride, padding, phi)
                for s in slices]
        return outs[0] if len(outs) == 1 else torch.cat(outs, 1)

    @staticmethod
    def _slices(z, weight, unshared_bias, kind, stride, padding, budget):
        if kind == "linear":
            per = z.shape[0] * z.shape[1]
        elif unshared_bias.dim() == 2:
            per = z.numel()
        else:  # unfolded patches: C*k*k per output position
            k = weight.shape[-1]
            ho = (z.shape[2] + 2 * padding - k) // stride + 1
            wo = (z.shape[3] + 2 * padding - k) // stride + 1
            per = z.shape[0] * z.shape[1] * k * k * ho * wo
        return _chunks(weight.shape[0], per, budget)

    @staticmethod
    def _apply(z, w, b, kind, stride, padding, phi):
        if kind == "linear":
            return linear_chunk(z, w, b, phi)
        return conv_chunk(z, w, b, stride, padding, phi)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        z, weight, unshared_bias = ctx.saved_tensors
        kind, stride, padding, phi, budget = ctx.conf
        need_z, need_w, need_b = ctx.needs_input_grad[:3]
        grad_z = torch.zeros_like(z) if need_z else None
        grad_w = torch.zeros_like(weight) if need_w else None
        grad_b = torch.zeros_like(unshared_bias) if need_b else None
        for s in _ChunkedDAC._slices(z, weight, unshared_bias, kind, stride, padding, budget):
            with torch.enable_grad():
                zz = z.detach().requires_grad_(need_z)
                ww = weight[s].detach().requires_grad_(need_w)
                bb = unshared_bias[s].detach().requires_grad_(need_b)
                out = _ChunkedDAC._apply(zz, ww, bb, kind, stride, padding, phi)
                wanted = [t for t in (zz, ww, bb) if t.requires_grad]
                grads = iter(torch.autograd.grad(out, wanted, grad_out[:, s].contiguous()))
            if need_z:
                grad_z += next(grads)
            if need_w:
                grad_w[s] = next(grads)
            if need_b:
                grad_b[s] = next(grads)
        return grad_z, grad_w, grad_b, None, None, None, None, None


def dac_conv2d_chunked(z: torch.Tensor, weight: torch.Tensor, unshared_bias: torch.Tensor,
                       stride: int, padding: int, phi: ActivationFn,
                       budget: int = CHUNK_ELEMENTS) -> torch.Tensor:
    return _ChunkedDAC.apply(z, weight, unshared_bias, "conv", stride, padding, phi, budget)


def dac_linear_chunked(z: torch.Tensor, weight: torch.Tensor, unshared_bias: torch.Tensor,
                       phi: ActivationFn, budget: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """z is (N, in); callers flatten leading dimensions."""
    return _ChunkedDAC.apply(z, weight, unshared_bias, "linear", 1, 0, phi, budget)
