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
// Backward, one pass per chunk of samples and block of input columns:
//   s[n,i,j]  = g[n,i] 1[z[n,j] + B[i,j] > 0]
//   dz[n,j]   = sum_i s W[i,j]               (complete per sample: no partial sums)
//   dW[i,j]   = sum_n g[n,i] relu(z + B) = sum_n s z[n,j] + B[i,j] sum_n s
//   dB[i,j]   = W[i,j] sum_n s               (W factored out of the sum over samples)
// so one mask (z > -B) and three masked operations per sample and weight make all three (the
// mask is computed once: the compiler merges the identical compares).
// dW and the sum of s are accumulated per chunk of samples and the chunks are added in chunk
// order at the end. Every column j is independent of the others in all three sums, so the work
// is also split by columns: at 784 inputs, where the partial sums allow one chunk of samples,
// the columns alone keep every thread busy. Chunks and column blocks depend on the shapes only
// (never on the thread count), so the gradients are the same bits with any number of threads.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "simd.h"

// Same rule as the conv kernel (dac_cpu.cpp: min(N, 32) chunks of consecutive samples), capped
// so that the partial sums (chunks * out * in elements, twice) stay within 2^17 elements each:
// writing, re-reading and adding more partials cost more than the kernel itself at the SGEMM
// shapes (200x200 and 250x250 at batch 256 ran 2x slower with 32 chunks). 2^17 rather than 2^18
// (issue 22, one thread, batch 128, layer forward + backward): 141x141 453 -> 408 us (12 -> 6
// chunks), 200x200 700 -> 664 (6 -> 3), 250x250 960 -> 937 (4 -> 2); one chunk (2^15-2^16) was
// slower again at 250x250 (1007-1024 us). The columns still give both threads work. Both bounds
// depend on the shapes only, never on the thread count.
static inline int batch_chunks(int64_t n, int64_t out_in) {
  const int64_t by_batch = std::max<int64_t>(1, std::min<int64_t>(n, 32));
  const int64_t by_memory = std::max<int64_t>(1, (int64_t(1) << 17) / std::max<int64_t>(1, out_in));
  return int(std::min(by_batch, by_memory));
}

namespace {

using simd::V;

// Work on rows 0..rows of `per_row` elements each, split between threads in tasks of at least
// 2^14 elements: anything smaller runs inline (a parallel region's start-up and barrier cost
// more), anything larger is shared. Serial copies, transposes and the partial sums' reduction
// were the part of a two-thread step at the MNIST MLP's shapes that the second thread could not
// take (issue 22: measured as the main thread's extra CPU time, benchmarks/thread_split.py).
template <typename F>
inline void parallel_rows(int64_t rows, int64_t per_row, const F& fn) {
  at::parallel_for(0, rows, std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(1, per_row)), fn);
}

// rows x cols -> rows x ld (zero padded) in scratch `slot`; returns src when no padding is needed
template <typename T>
const T* padded(const T* src, int64_t rows, int64_t cols, int64_t ld, int slot) {
  if (ld == cols) return src;
  simd::Scratch<T> buf(slot, rows * ld, false);  // each task zeroes its rows' padding
  T* p = buf.p;
  parallel_rows(rows, ld, [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) {
      std::memcpy(p + r * ld, src + r * cols, cols * sizeof(T));
      std::fill(p + r * ld + cols, p + (r + 1) * ld, T(0));
    }
  });
  return p;
}

// relu(z + B) = max(z, -B) + B: the kernels read nb = -B and add the B part in closed form, one
// instruction per weight less than relu(z + B) in every pass (the B part's sums cancel exactly
// in exact arithmetic where z + B < 0; in floating point they leave rounding of order
// eps |W B|).

// Output rows per forward register block: NR rows x NS samples of accumulators, so that each
// vector loaded (z, W, -B) serves several multiply-adds. One row at a time, the loads (6 per 8
// operations) bounded the loop, not the arithmetic. 4 rows fill AVX-512's 32 registers (16
// accumulators); AVX2 has 16, so 2.
template <typename T>
constexpr int forward_rows() { return sizeof(typename V<T>::type) == 64 ? 4 : 2; }

// Pins a loaded vector in a register: without it GCC folds the W and -B loads into every max
// and FMA that reads them (a memory operand per operation: 36 loads per 32 operations in the
// 4 x 4 block, found in the disassembly), which is what the register block is meant to avoid.
template <typename VT>
inline void in_register(VT& v) {
#if defined(__x86_64__)
  asm("" : "+v"(v));
#else
  (void)v;
#endif
}

// out[n0:n0+NS, i:i+NR] - (sum_j W B)[i] for NS samples of padded rows z (ld columns).
template <typename T, int NS, int NR>
inline void forward_rows_block(const T* const* zs, const T* w, const T* nb, const T* wb, T* out,
                               int64_t n0, int64_t i, int64_t O, int64_t ld) {
  using Vt = V<T>;
  using VT = typename Vt::type;
  VT acc[NR][NS];
  for (int r = 0; r < NR; ++r)
    for (int s = 0; s < NS; ++s) acc[r][s] = Vt::splat(T(0));
  for (int64_t j = 0; j < ld; j += Vt::L) {
    VT zv[NS];
    for (int s = 0; s < NS; ++s) zv[s] = Vt::load(zs[s] + j);
    for (int r = 0; r < NR; ++r) {
      VT wv = Vt::load(w + (i + r) * ld + j), bv = Vt::load(nb + (i + r) * ld + j);
      in_register(wv);
      in_register(bv);
      for (int s = 0; s < NS; ++s) acc[r][s] += wv * Vt::max(zv[s], bv);
    }
  }
  for (int r = 0; r < NR; ++r)
    for (int s = 0; s < NS; ++s) out[(n0 + s) * O + i + r] = Vt::sum(acc[r][s]) + wb[i + r];
}

// Rows i0..i1 for NS samples starting at n0: blocks of forward_rows() rows, then single rows.
// Each output element is one sum in the same order either way.
template <typename T, int NS>
inline void forward_block(const T* z, const T* w, const T* nb, const T* wb, T* out, int64_t n0,
                          int64_t i0, int64_t i1, int64_t O, int64_t ld) {
  constexpr int NR = forward_rows<T>();
  const T* zs[NS];
  for (int s = 0; s < NS; ++s) zs[s] = z + (n0 + s) * ld;
  int64_t i = i0;
  for (; i + NR <= i1; i += NR) forward_rows_block<T, NS, NR>(zs, w, nb, wb, out, n0, i, O, ld);
  for (; i < i1; ++i) forward_rows_block<T, NS, 1>(zs, w, nb, wb, out, n0, i, O, ld);
}

// NS samples starting at n0, columns j0..j1: dz (complete) and this chunk's partial sums of
// s z (dW without its B part) and of s = g 1[z > -B] (dB / W).
// Output rows i0..i1 only; gt is g transposed (O x N): gt[i * N + n] = g[n, i].
template <typename T, int NS, bool FIRST>
inline void backward_block(const T* z, const T* w, const T* nb, const T* gt, T* gz, T* pw, T* ps,
                           int64_t n0, int64_t i0, int64_t i1, int64_t j0, int64_t j1, int64_t ld,
                           int64_t N) {
  using Vt = V<T>;
  using VT = typename Vt::type;
  for (int64_t j = j0; j < j1; j += Vt::L) {
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
        const VT gv = Vt::splat(gt[i * N + n0 + s]);
        dw = Vt::fma_if_greater(dw, zv[s], bv, gv, zv[s]);
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
// Rows split between threads in tasks of at least 2^14 elements (inline at the SGEMM shapes;
// at 784 x 256, serial, this was a tenth of a one-thread step that two threads did not share).
template <typename T>
void negated_bias(const T* w, const T* b0, int64_t O, int64_t C, int64_t ld, int slot, T*& nb, T*& wb) {
  using Vt = V<T>;
  simd::Scratch<T> nbuf(slot, O * ld, false), wbuf(slot + 1, O, false);  // padding zeroed per row
  T *nbp = nbuf.p, *wbp = wbuf.p;
  parallel_rows(O, ld, [&](int64_t ib, int64_t ie) {
    for (int64_t i = ib; i < ie; ++i) {
      for (int64_t j = 0; j < C; ++j) nbp[i * ld + j] = -b0[i * C + j];
      std::fill(nbp + i * ld + C, nbp + (i + 1) * ld, T(0));
      typename Vt::type acc = Vt::splat(T(0));
      for (int64_t j = 0; j < ld; j += Vt::L) acc += Vt::load(w + i * ld + j) * Vt::load(nbp + i * ld + j);
      wbp[i] = -Vt::sum(acc);
    }
  });
  nb = nbp;
  wb = wbp;
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
  constexpr int NR = forward_rows<T>();
  const int64_t it = (tile_rows<T>(ld) + NR - 1) / NR * NR;  // whole register blocks
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

// Output rows per backward tile of one column vector: the tile's W, -B and partial sums (four
// rows of vectors) stay in 16 KiB of L1 while blocks of samples sweep over it.
template <typename T>
inline int64_t backward_tile_rows() {
  return std::max<int64_t>(1, 16384 / (4 * V<T>::L * int64_t(sizeof(T))));
}

// Samples per backward block: each W, -B and partial-sum vector loaded serves this many samples
// (z and dz of the block live in registers: 16 of AVX-512's 32 with 8 samples; AVX2 has 16).
template <typename T>
constexpr int backward_samples() { return sizeof(typename V<T>::type) == 64 ? 8 : 4; }

// backward_block for a block of ns <= NS samples (the last of a chunk may be short).
template <typename T, int NS>
inline void backward_any(int64_t ns, bool first, const T* z, const T* w, const T* nbv, const T* gt, T* gz,
                         T* pw, T* ps, int64_t nb, int64_t i0, int64_t i1, int64_t j0, int64_t j1,
                         int64_t ld, int64_t N) {
  if (ns == NS) {
    auto block = first ? backward_block<T, NS, true> : backward_block<T, NS, false>;
    block(z, w, nbv, gt, gz, pw, ps, nb, i0, i1, j0, j1, ld, N);
  } else if constexpr (NS > 1) {
    backward_any<T, NS - 1>(ns, first, z, w, nbv, gt, gz, pw, ps, nb, i0, i1, j0, j1, ld, N);
  }
}

// One task: chunk `ch` of the samples, one vector of columns j0..j0 + L. With one chunk, the
// task also writes its columns of dW and dB (no partial sums to add).
template <typename T>
void backward_task(const T* z, const T* w, const T* nbv, const T* gt, T* gz, T* pw, T* ps, int64_t ch,
                   int nchunks, int64_t j0, int64_t N, int64_t O, int64_t ld) {
  const int64_t j1 = j0 + V<T>::L, it = backward_tile_rows<T>();
  const int64_t n0 = N * ch / nchunks, n1 = N * (ch + 1) / nchunks;
  for (int64_t n = n0; n < n1; ++n) std::fill(gz + n * ld + j0, gz + n * ld + j1, T(0));
  // dz[n] sums over i in increasing order, tile after tile: fixed by the shapes.
  for (int64_t i0 = 0; i0 < O; i0 += it) {
    const int64_t i1 = std::min(O, i0 + it);
    constexpr int BS = backward_samples<T>();
    for (int64_t nb = n0; nb < n1; nb += BS)  // the chunk's first block starts the partial sums
      backward_any<T, BS>(std::min<int64_t>(BS, n1 - nb), nb == n0, z, w, nbv, gt, gz, pw, ps, nb, i0, i1,
                          j0, j1, ld, N);
  }
}

// dW = (partial sums of s z, chunks added in chunk order) + B (sum of s), dB = W (sum of s), for
// rows ib..ie and columns jb..je (< C).
template <typename T>
void finish_rows(const T* pw, const T* ps, const T* w0, const T* b0, T* gw, T* gb,
                 int64_t ib, int64_t ie, int64_t jb, int64_t je, int nchunks, int64_t np, int64_t C,
                 int64_t ld) {
  std::vector<T> sw(je - jb), sb(je - jb);
  for (int64_t i = ib; i < ie; ++i) {
    std::memcpy(sw.data(), pw + i * ld + jb, (je - jb) * sizeof(T));
    std::memcpy(sb.data(), ps + i * ld + jb, (je - jb) * sizeof(T));
    for (int ch = 1; ch < nchunks; ++ch) {
      const T* a = pw + ch * np + i * ld + jb;
      const T* c = ps + ch * np + i * ld + jb;
      for (int64_t j = 0; j < je - jb; ++j) { sw[j] += a[j]; sb[j] += c[j]; }
    }
    for (int64_t j = jb; j < je; ++j) {
      gw[i * C + j] = sw[j - jb] + b0[i * C + j] * sb[j - jb];
      gb[i * C + j] = w0[i * C + j] * sb[j - jb];
    }
  }
}

template <typename T>
void backward_impl(const T* z0, const T* w0, const T* b0, const T* g, T* gz0, T* gw, T* gb,
                   int64_t N, int64_t C, int64_t O) {
  const int64_t L = V<T>::L, ld = (C + L - 1) / L * L, nvec = ld / L;
  const T* z = padded(z0, N, C, ld, 0);
  const T* w = padded(w0, O, C, ld, 1);
  T *nbv, *wb;
  negated_bias(w, b0, O, C, ld, 2, nbv, wb);
  std::unique_ptr<T[]> gt(new T[O * N]);  // g transposed: a block's g values for one row are adjacent
  T* gtp = gt.get();
  parallel_rows(O, N, [&](int64_t ib, int64_t ie) {
    for (int64_t n = 0; n < N; ++n)
      for (int64_t i = ib; i < ie; ++i) gtp[i * N + n] = g[n * O + i];
  });
  simd::Scratch<T> gzb(5, ld == C ? 0 : N * ld, false);
  T* gz = ld == C ? gz0 : gzb.p;
  const int nchunks = batch_chunks(N, O * ld);
  const int64_t np = O * ld;
  simd::Scratch<T> pws(6, nchunks * np, false), pss(7, nchunks * np, false);
  T *pw = pws.p, *ps = pss.p;
  at::parallel_for(0, nchunks * nvec, 1, [&](int64_t tb, int64_t te) {
    for (int64_t t = tb; t < te; ++t) {
      const int64_t ch = t / nvec, j0 = (t % nvec) * L;
      backward_task(z, w, nbv, gt.get(), gz, pw + ch * np, ps + ch * np, ch, nchunks, j0, N, O, ld);
      if (nchunks == 1 && j0 < C)
        finish_rows(pw, ps, w0, b0, gw, gb, 0, O, j0, std::min(C, j0 + L), 1, np, C, ld);
    }
  });
  // Several chunks: added in chunk order (element by element), the same bits whatever the
  // thread count, rows shared between threads (it reads every partial sum: at 181 x 181, batch
  // 128, three chunks of them (seven under the earlier 2^18 cap), a serial tail of the backward
  // when it ran on one thread).
  if (nchunks > 1)
    parallel_rows(O, ld * nchunks, [&](int64_t ib, int64_t ie) {
      finish_rows(pw, ps, w0, b0, gw, gb, ib, ie, 0, C, nchunks, np, C, ld);
    });
  if (ld != C)
    parallel_rows(N, ld, [&](int64_t nb_, int64_t ne) {
      for (int64_t n = nb_; n < ne; ++n) std::memcpy(gz0 + n * C, gz + n * ld, C * sizeof(T));
    });
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

// The layer as one operator with its autograd node in C++, output bias included. Through a
// Python autograd.Function, a separate bias add and Python-side dispatch the layer's forward +
// backward cost 150-170 us more than its two kernel calls (141 x 141, batch 128, one thread: 508
// against 352 us, on a plain layer's 294 us; issue 22); now about 100 us, as the plain layer's
// own autograd nodes cost.
at::Tensor layer_forward(const at::Tensor& z, const at::Tensor& w, const at::Tensor& b,
                         const std::optional<at::Tensor>& bias) {
  at::Tensor out = linear_forward(z.contiguous(), w.contiguous(), b.contiguous());
  return bias.has_value() && bias->defined() ? out.add_(*bias) : out;
}

class DACLinearNode : public torch::autograd::Function<DACLinearNode> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& z,
                            const at::Tensor& w, const at::Tensor& b,
                            const std::optional<at::Tensor>& bias) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor zc = z.contiguous(), wc = w.contiguous(), bc = b.contiguous();
    ctx->save_for_backward({zc, wc, bc});  // only the inputs
    ctx->saved_data["bias"] = bias.has_value() && bias->defined();
    return layer_forward(zc, wc, bc, bias);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    at::Tensor g = grads[0].contiguous();
    std::vector<at::Tensor> d = linear_backward(saved[0], saved[1], saved[2], g);
    at::Tensor gbias = ctx->saved_data["bias"].toBool() ? g.sum(0) : at::Tensor();
    return {d[0], d[1], d[2], gbias};
  }
};

at::Tensor layer_autograd(const at::Tensor& z, const at::Tensor& w, const at::Tensor& b,
                          const std::optional<at::Tensor>& bias) {
  return DACLinearNode::apply(z, w, b, bias);
}

}  // namespace

BIASBENCH_LIBRARY(BIASBENCH_NS, m) {
  m.def("forward(Tensor z, Tensor w, Tensor b) -> Tensor");
  m.def("backward(Tensor z, Tensor w, Tensor b, Tensor grad) -> Tensor[]");
  m.def("layer(Tensor z, Tensor w, Tensor b, Tensor? bias) -> Tensor");
}

BIASBENCH_LIBRARY_IMPL(BIASBENCH_NS, CPU, m) {
  m.impl("forward", &linear_forward);
  m.impl("backward", &linear_backward);
  m.impl("layer", &layer_forward);  // no autograd (inference mode)
}

BIASBENCH_LIBRARY_IMPL(BIASBENCH_NS, Autograd, m) {
  m.impl("layer", &layer_autograd);
}
