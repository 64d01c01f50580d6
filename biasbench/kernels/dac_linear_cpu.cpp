// Fused dense DAC layer (ReLU) for CPU.
//
//   out[n,i] = sum_j W[i,j] relu(B[i,j] + z[n,j])
//
// Nothing (N, out, in)-sized is ever built: every pass recomputes relu(z + B) in registers.
// Vectors run over j (contiguous rows of W, B and z); rows are copied into buffers padded to a
// whole number of vectors (padding: W = B = z = 0, which contributes exactly 0 and whose
// gradients are dropped), so the inner loops have no tails. Samples are taken up to 4 at a
// time so that each load of a W / B vector serves 4 samples.
//
// Backward, one pass per chunk of samples:
//   s[n,i,j]  = g[n,i] 1[z[n,j] + B[i,j] > 0]
//   dz[n,j]   = sum_i s W[i,j]               (complete per sample: no partial sums)
//   dW[i,j]   = sum_n g[n,i] relu(z + B)
//   dB[i,j]   = W[i,j] sum_n s               (W factored out of the sum over samples)
// dW and the sum of s are accumulated per chunk of samples and the chunks are added in chunk
// order at the end. The chunks depend on the shapes only (never on the thread count), so the
// gradients are the same bits with any number of threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "simd.h"

// Same rule as the conv kernel (dac_cpu.cpp: min(N, 32) chunks of consecutive samples), capped
// so that the partial sums (chunks * out * in elements, twice) stay within 2^18 elements each:
// writing, re-reading and adding more partials cost more than the kernel itself at the SGEMM
// shapes (200x200 and 250x250 at batch 256 ran 2x slower with 32 chunks). Both bounds depend on
// the shapes only, never on the thread count.
static inline int batch_chunks(int64_t n, int64_t out_in) {
  const int64_t by_batch = std::max<int64_t>(1, std::min<int64_t>(n, 32));
  const int64_t by_memory = std::max<int64_t>(1, (int64_t(1) << 18) / std::max<int64_t>(1, out_in));
  return int(std::min(by_batch, by_memory));
}

namespace {

using simd::V;

// rows x cols -> rows x ld (zero padded) in scratch `slot`; returns src when no padding is needed
template <typename T>
const T* padded(const T* src, int64_t rows, int64_t cols, int64_t ld, int slot) {
  if (ld == cols) return src;
  simd::Scratch<T> buf(slot, rows * ld);  // serial: a copy, cheaper than a parallel region's start-up
  for (int64_t r = 0; r < rows; ++r) std::memcpy(buf.p + r * ld, src + r * cols, cols * sizeof(T));
  return buf.p;
}

// relu(z + B) = max(z, -B) + B: the kernels read nb = -B and add the B part in closed form, one
// instruction per weight less than relu(z + B) in every pass (the B part's sums cancel exactly
// in exact arithmetic where z + B < 0; in floating point they leave rounding of order
// eps |W B|).

// out[n0:n0+NS, :] - (sum_j W B)[i] for NS samples of padded rows z (ld columns).
template <typename T, int NS>
inline void forward_block(const T* z, const T* w, const T* nb, const T* wb, T* out, int64_t n0,
                          int64_t i0, int64_t i1, int64_t O, int64_t ld) {
  using Vt = V<T>;
  using VT = typename Vt::type;
  const T* zs[NS];
  for (int s = 0; s < NS; ++s) zs[s] = z + (n0 + s) * ld;
  for (int64_t i = i0; i < i1; ++i) {
    const T* wi = w + i * ld;
    const T* bi = nb + i * ld;
    VT acc[NS];
    for (int s = 0; s < NS; ++s) acc[s] = Vt::splat(T(0));
    for (int64_t j = 0; j < ld; j += Vt::L) {
      const VT wv = Vt::load(wi + j), bv = Vt::load(bi + j);
      for (int s = 0; s < NS; ++s) acc[s] += wv * Vt::max(Vt::load(zs[s] + j), bv);
    }
    for (int s = 0; s < NS; ++s) out[(n0 + s) * O + i] = Vt::sum(acc[s]) + wb[i];
  }
}

// NS samples starting at n0: dz rows (complete) and this chunk's partial sums of
// g max(z, -B) (dW without its B part) and of s = g 1[z > -B] (dB / W).
// Output rows i0..i1 only; gt holds g transposed for the block: gt[(i - i0) * NS + s] = g[n0 + s, i].
template <typename T, int NS, bool FIRST>
inline void backward_block(const T* z, const T* w, const T* nb, const T* gt, T* gz, T* pw, T* ps,
                           int64_t n0, int64_t i0, int64_t i1, int64_t ld) {
  using Vt = V<T>;
  using VT = typename Vt::type;
  for (int64_t j = 0; j < ld; j += Vt::L) {
    VT zv[NS], dz[NS];
    for (int s = 0; s < NS; ++s) {
      zv[s] = Vt::load(z + (n0 + s) * ld + j);
      dz[s] = Vt::load(gz + (n0 + s) * ld + j);
    }
    for (int64_t i = i0; i < i1; ++i) {
      const VT wv = Vt::load(w + i * ld + j), bv = Vt::load(nb + i * ld + j);
      // the chunk's first block of samples starts the partial sums (no zeroing pass)
      VT dw = FIRST ? Vt::splat(T(0)) : Vt::load(pw + i * ld + j);
      VT sb = FIRST ? Vt::splat(T(0)) : Vt::load(ps + i * ld + j);
      for (int s = 0; s < NS; ++s) {
        const VT gv = Vt::splat(gt[(i - i0) * NS + s]);
        dw += gv * Vt::max(zv[s], bv);
        sb = Vt::add_if_greater(sb, zv[s], bv, gv);
        dz[s] = Vt::fma_if_greater(dz[s], zv[s], bv, gv, wv);
      }
      Vt::store(pw + i * ld + j, dw);
      Vt::store(ps + i * ld + j, sb);
    }
    for (int s = 0; s < NS; ++s) Vt::store(gz + (n0 + s) * ld + j, dz[s]);
  }
}

// -B as O x ld rows (zero padded) in scratch `slot`, and sum_j W[i,j] B[i,j] per row into wb (O
// elements, scratch slot + 1); w is W padded to ld columns.
template <typename T>
void negated_bias(const T* w, const T* b0, int64_t O, int64_t C, int64_t ld, int slot, T*& nb, T*& wb) {
  using Vt = V<T>;
  simd::Scratch<T> nbuf(slot, O * ld), wbuf(slot + 1, O, false);
  for (int64_t i = 0; i < O; ++i) {
    for (int64_t j = 0; j < C; ++j) nbuf.p[i * ld + j] = -b0[i * C + j];
    typename Vt::type acc = Vt::splat(T(0));
    for (int64_t j = 0; j < ld; j += Vt::L) acc += Vt::load(w + i * ld + j) * Vt::load(nbuf.p + i * ld + j);
    wbuf.p[i] = -Vt::sum(acc);
  }
  nb = nbuf.p;
  wb = wbuf.p;
}

// Output rows per tile: the tile's W and B rows (and backward's partial sums) stay in L1 while
// blocks of samples sweep over it. Depends on the shapes only.
template <typename T>
inline int64_t tile_rows(int64_t ld) {
  return std::max<int64_t>(1, 16384 / (2 * ld * int64_t(sizeof(T))));
}

template <typename T>
void forward_impl(const T* z0, const T* w0, const T* b0, T* out, int64_t N, int64_t C, int64_t O) {
  const int64_t ld = (C + V<T>::L - 1) / V<T>::L * V<T>::L;
  const T* z = padded(z0, N, C, ld, 0);
  const T* w = padded(w0, O, C, ld, 1);
  T *nb, *wb;
  negated_bias(w, b0, O, C, ld, 2, nb, wb);
  const int64_t blocks = (N + 3) / 4;
  const int64_t it = tile_rows<T>(ld);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i0 = 0; i0 < O; i0 += it) {
      const int64_t i1 = std::min(O, i0 + it);
      for (int64_t k = begin; k < end; ++k) {
        const int64_t n0 = k * 4, ns = std::min<int64_t>(4, N - n0);
        switch (ns) {
          case 4: forward_block<T, 4>(z, w, nb, wb, out, n0, i0, i1, O, ld); break;
          case 3: forward_block<T, 3>(z, w, nb, wb, out, n0, i0, i1, O, ld); break;
          case 2: forward_block<T, 2>(z, w, nb, wb, out, n0, i0, i1, O, ld); break;
          default: forward_block<T, 1>(z, w, nb, wb, out, n0, i0, i1, O, ld); break;
        }
      }
    }
  });
}

template <typename T>
void backward_impl(const T* z0, const T* w0, const T* b0, const T* g, T* gz0, T* gw, T* gb,
                   int64_t N, int64_t C, int64_t O) {
  const int64_t ld = (C + V<T>::L - 1) / V<T>::L * V<T>::L;
  const T* z = padded(z0, N, C, ld, 0);
  const T* w = padded(w0, O, C, ld, 1);
  T *nbv, *wb;
  negated_bias(w, b0, O, C, ld, 2, nbv, wb);
  simd::Scratch<T> gsum(4, O);  // sum_n g[n, i], in sample order: dW's B part is B gsum
  for (int64_t n = 0; n < N; ++n)
    for (int64_t i = 0; i < O; ++i) gsum.p[i] += g[n * O + i];
  simd::Scratch<T> gzb(5, ld == C ? 0 : N * ld, false);
  T* gz = ld == C ? gz0 : gzb.p;
  const int nchunks = batch_chunks(N, O * ld);
  const int64_t np = O * ld;
  simd::Scratch<T> pws(6, nchunks * np, false), pss(7, nchunks * np, false);
  T *pw = pws.p, *ps = pss.p;
  const int64_t it = tile_rows<T>(ld);
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    std::vector<T> gt(it * 4);
    for (int64_t ch = cb; ch < ce; ++ch) {
      T* pwc = pw + ch * np;
      T* psc = ps + ch * np;
      const int64_t n0 = N * ch / nchunks, n1 = N * (ch + 1) / nchunks;
      std::fill(gz + n0 * ld, gz + n1 * ld, T(0));
      // dz[n] sums over i in increasing order, tile after tile: fixed by the shapes.
      for (int64_t i0 = 0; i0 < O; i0 += it) {
        const int64_t i1 = std::min(O, i0 + it);
        for (int64_t nb = n0; nb < n1; nb += 4) {
          const int64_t ns = std::min<int64_t>(4, n1 - nb);
          for (int64_t i = i0; i < i1; ++i)
            for (int64_t s = 0; s < ns; ++s) gt[(i - i0) * ns + s] = g[(nb + s) * O + i];
          auto run = [&](auto block) { block(z, w, nbv, gt.data(), gz, pwc, psc, nb, i0, i1, ld); };
          const bool first = nb == n0;
          switch (ns * 2 + int(first)) {
            case 9: run(backward_block<T, 4, true>); break;
            case 8: run(backward_block<T, 4, false>); break;
            case 7: run(backward_block<T, 3, true>); break;
            case 6: run(backward_block<T, 3, false>); break;
            case 5: run(backward_block<T, 2, true>); break;
            case 4: run(backward_block<T, 2, false>); break;
            case 3: run(backward_block<T, 1, true>); break;
            default: run(backward_block<T, 1, false>); break;
          }
        }
      }
    }
  });
  // chunks added in chunk order (element by element, vectorised over j): the same bits
  // whatever the thread count. Rows of at least 2^18 partial elements per task: at the SGEMM
  // shapes this runs inline, sparing a parallel region's start-up and barrier.
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 18) / (ld * nchunks));
  at::parallel_for(0, O, grain, [&](int64_t ib, int64_t ie) {
    std::vector<T> sw(ld), sb(ld);
    for (int64_t i = ib; i < ie; ++i) {
      std::memcpy(sw.data(), pw + i * ld, ld * sizeof(T));
      std::memcpy(sb.data(), ps + i * ld, ld * sizeof(T));
      for (int ch = 1; ch < nchunks; ++ch) {
        const T* a = pw + ch * np + i * ld;
        const T* c = ps + ch * np + i * ld;
        for (int64_t j = 0; j < ld; ++j) { sw[j] += a[j]; sb[j] += c[j]; }
      }
      for (int64_t j = 0; j < C; ++j) {
        gw[i * C + j] = sw[j] + b0[i * C + j] * gsum.p[i];
        gb[i * C + j] = w0[i * C + j] * sb[j];
      }
    }
  });
  if (ld != C)
    for (int64_t n = 0; n < N; ++n) std::memcpy(gz0 + n * C, gz + n * ld, C * sizeof(T));
}

void check(const at::Tensor& z, const at::Tensor& w, const at::Tensor& b) {
  TORCH_CHECK(z.dim() == 2 && w.dim() == 2 && b.dim() == 2, "dac_linear_cpu: bad ranks");
  TORCH_CHECK(z.is_contiguous() && w.is_contiguous() && b.is_contiguous(),
              "dac_linear_cpu: contiguous");
  TORCH_CHECK(z.scalar_type() == w.scalar_type() && z.scalar_type() == b.scalar_type(),
              "dac_linear_cpu: dtypes differ");
  TORCH_CHECK(w.size(1) == z.size(1) && b.size(0) == w.size(0) && b.size(1) == w.size(1),
              "dac_linear_cpu: shapes");
}

at::Tensor linear_forward(const at::Tensor& z, const at::Tensor& w, const at::Tensor& b) {
  check(z, w, b);
  at::Tensor out = at::empty({z.size(0), w.size(0)}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "dac_linear_forward", [&] {
    forward_impl<scalar_t>(z.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                           out.data_ptr<scalar_t>(), z.size(0), z.size(1), w.size(0));
  });
  return out;
}

std::vector<at::Tensor> linear_backward(const at::Tensor& z, const at::Tensor& w,
                                        const at::Tensor& b, const at::Tensor& grad) {
  check(z, w, b);
  TORCH_CHECK(grad.is_contiguous() && grad.dim() == 2 && grad.size(0) == z.size(0) &&
                  grad.size(1) == w.size(0) && grad.scalar_type() == z.scalar_type(),
              "dac_linear_cpu: grad");
  at::Tensor gz = at::empty_like(z), gw = at::empty_like(w), gb = at::empty_like(b);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "dac_linear_backward", [&] {
    backward_impl<scalar_t>(z.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                            grad.data_ptr<scalar_t>(), gz.data_ptr<scalar_t>(),
                            gw.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>(), z.size(0), z.size(1),
                            w.size(0));
  });
  return {gz, gw, gb};
}

}  // namespace

BIASBENCH_LIBRARY(BIASBENCH_NS, m) {
  m.def("forward(Tensor z, Tensor w, Tensor b) -> Tensor");
  m.def("backward(Tensor z, Tensor w, Tensor b, Tensor grad) -> Tensor[]");
}

BIASBENCH_LIBRARY_IMPL(BIASBENCH_NS, CPU, m) {
  m.impl("forward", &linear_forward);
  m.impl("backward", &linear_backward);
}
