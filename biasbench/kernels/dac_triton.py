"""Fused DAC conv for CUDA in Triton (ReLU, biases shared over kernel positions).

Never materialises the out_channels-fold expanded input: every program recomputes
relu(z + B[i,j]) for the input values it reads, and padded positions contribute 0 (padding
after the activation). Three kernels:
  forward      one program per (sample, output channel, block of output positions)
  grad_input   one program per (sample, input channel, block of input positions); sums over
               output channels and taps whose stride grid hits the position
  grad_params  one program per (output, input) channel pair; reduces over samples and
               positions, giving dB[i,j] and the k*k taps of dW[i,j] at once
Kernels are defined on first use so that TRITON_INTERPRET=1 (set before that) runs them on CPU
tensors; the tests do that on small shapes. Accumulation is in float32 (float64 inputs are
accumulated in float64).
"""

from __future__ import annotations

import functools
import os

import torch


def available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def fwd(z, w, b, out, C, H, W, O, Ho, Wo, S: tl.constexpr, PAD: tl.constexpr,
            K: tl.constexpr, BLOCK: tl.constexpr):
        pid_ni = tl.program_id(0)
        n = pid_ni // O
        i = pid_ni % O
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        valid = offs < Ho * Wo
        oy = offs // Wo
        ox = offs % Wo
        acc = tl.zeros([BLOCK], dtype=tl.float32 if z.dtype.element_ty != tl.float64 else tl.float64)
        for j in range(0, C):
            bij = tl.load(b + i * C + j)
            zbase = z + (n * C + j) * H * W
            for a in tl.static_range(K):
                for c in tl.static_range(K):
                    iy = oy * S + a - PAD
                    ix = ox * S + c - PAD
                    inb = valid & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
                    zv = tl.load(zbase + iy * W + ix, mask=inb, other=0.0)
                    act = tl.where(inb, tl.maximum(zv + bij, 0.0), 0.0)
                    acc += tl.load(w + ((i * C + j) * K + a) * K + c) * act
        tl.store(out + pid_ni * Ho * Wo + offs, acc, mask=valid)

    @triton.jit
    def grad_input(z, w, b, g, gz, C, H, W, O, Ho, Wo, S: tl.constexpr, PAD: tl.constexpr,
                   K: tl.constexpr, BLOCK: tl.constexpr):
        pid_nj = tl.program_id(0)
        n = pid_nj // C
        j = pid_nj % C
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        valid = offs < H * W
        y = offs // W
        x = offs % W
        zv = tl.load(z + pid_nj * H * W + offs, mask=valid, other=0.0)
        acc = tl.zeros([BLOCK], dtype=tl.float32 if z.dtype.element_ty != tl.float64 else tl.float64)
        for i in range(0, O):
            bij = tl.load(b + i * C + j)
            t = tl.zeros([BLOCK], dtype=acc.dtype)
            for a in tl.static_range(K):
                for c in tl.static_range(K):
                    ty = y + PAD - a
                    tx = x + PAD - c
                    oy = ty // S
                    ox = tx // S
                    hit = valid & (ty >= 0) & (tx >= 0) & (ty % S == 0) & (tx % S == 0) \
                        & (oy < Ho) & (ox < Wo)
                    gv = tl.load(g + ((n * O + i) * Ho + oy) * Wo + ox, mask=hit, other=0.0)
                    t += tl.load(w + ((i * C + j) * K + a) * K + c) * gv
            acc += tl.where(zv + bij > 0, t, 0.0)
        tl.store(gz + pid_nj * H * W + offs, acc, mask=valid)

    @triton.jit
    def grad_params(z, w, b, g, gw, gb, N, C, H, W, O, Ho, Wo, S: tl.constexpr, PAD: tl.constexpr,
                    K: tl.constexpr, KK: tl.constexpr, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        i = pid // C
        j = pid % C
        bij = tl.load(b + pid)
        taps = tl.arange(0, KK)
        tap_ok = taps < K * K
        ta = taps // K
        tc = taps % K
        wv = tl.load(w + pid * K * K + taps, mask=tap_ok, other=0.0)
        dt = tl.float32 if z.dtype.element_ty != tl.float64 else tl.float64
        accw = tl.zeros([KK], dtype=dt)
        accb = tl.zeros([BLOCK], dtype=dt)
        # dW[i,j,a,c] = sum over samples and output positions of g * relu(zpad + B)
        for start in range(0, N * Ho * Wo, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            valid = offs < N * Ho * Wo
            n = offs // (Ho * Wo)
            p = offs % (Ho * Wo)
            gv = tl.load(g + (n * O + i) * Ho * Wo + p, mask=valid, other=0.0)
            iy = (p // Wo)[:, None] * S + ta[None, :] - PAD
            ix = (p % Wo)[:, None] * S + tc[None, :] - PAD
            inb = valid[:, None] & tap_ok[None, :] & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
            zv = tl.load(z + ((n[:, None] * C + j) * H + iy) * W + ix, mask=inb, other=0.0)
            act = tl.where(inb, tl.maximum(zv + bij, 0.0), 0.0)
            accw += tl.sum(act * gv[:, None], axis=0)
        # dB[i,j] = sum over samples and input positions of relu'(z + B) * (W^T g)
        for start in range(0, N * H * W, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            valid = offs < N * H * W
            n = offs // (H * W)
            q = offs % (H * W)
            zv = tl.load(z + (n * C + j) * H * W + q, mask=valid, other=0.0)
            ty = (q // W)[:, None] + PAD - ta[None, :]
            tx = (q % W)[:, None] + PAD - tc[None, :]
            oy = ty // S
            ox = tx // S
            hit = valid[:, None] & tap_ok[None, :] & (ty >= 0) & (tx >= 0) & (ty % S == 0) \
                & (tx % S == 0) & (oy < Ho) & (ox < Wo)
            gv = tl.load(g + ((n[:, None] * O + i) * Ho + oy) * Wo + ox, mask=hit, other=0.0)
            t = tl.sum(gv * wv[None, :], axis=1)
            accb += tl.where(valid & (zv + bij > 0), t, 0.0)
        tl.store(gw + pid * K * K + taps, accw, mask=tap_ok)
        tl.store(gb + pid, tl.sum(accb, axis=0))

    return fwd, grad_input, grad_params


_BLOCK = 128


def _geometry(z, w, stride, padding):
    n, c, h, wd = z.shape
    k = w.shape[-1]
    ho, wo = (h + 2 * padding - k) // stride + 1, (wd + 2 * padding - k) // stride + 1
    return n, c, h, wd, w.shape[0], k, ho, wo


class _DACConvTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, weight, unshared_bias, stride, padding):
        import triton

        z, weight, unshared_bias = z.contiguous(), weight.contiguous(), unshared_bias.contiguous()
        ctx.save_for_backward(z, weight, unshared_bias)  # only the inputs
        ctx.conf = (stride, padding)
        n, c, h, wd, o, k, ho, wo = _geometry(z, weight, stride, padding)
        out = torch.empty(n, o, ho, wo, device=z.device, dtype=z.dtype)
        fwd, _, _ = _kernels()
        fwd[(n * o, triton.cdiv(ho * wo, _BLOCK))](z, weight, unshared_bias, out, c, h, wd, o, ho, wo,
                                                    S=stride, PAD=padding, K=k, BLOCK=_BLOCK)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        import triton

        z, weight, unshared_bias = ctx.saved_tensors
        stride, padding = ctx.conf
        grad = grad.contiguous()
        n, c, h, wd, o, k, ho, wo = _geometry(z, weight, stride, padding)
        _, grad_input, grad_params = _kernels()
        gz = torch.empty_like(z)
        grid = (n * c, triton.cdiv(h * wd, _BLOCK))
        grad_input[grid](z, weight, unshared_bias, grad, gz, c, h, wd, o, ho, wo, S=stride, PAD=padding,
                         K=k, BLOCK=_BLOCK)
        gw, gb = torch.empty_like(weight), torch.empty_like(unshared_bias)
        grad_params[(o * c,)](z, weight, unshared_bias, grad, gw, gb, n, c, h, wd, o, ho, wo, S=stride,
                              PAD=padding, K=k, KK=triton.next_power_of_2(k * k), BLOCK=_BLOCK)
        return gz, gw, gb, None, None


def dac_conv2d(z: torch.Tensor, weight: torch.Tensor, unshared_bias: torch.Tensor, stride: int,
               padding: int) -> torch.Tensor:
    return _DACConvTriton.apply(z, weight, unshared_bias, stride, padding)
