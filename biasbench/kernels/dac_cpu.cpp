// Fused DAC conv (ReLU, biases shared over kernel positions) for CPU.
//
//   out[n,i,p] = sum_j sum_(a,b) W[i,j,a,b] relu(B[i,j] + zpad[n,j,p*s+(a,b)])
//
// The activated, zero-bordered plane relu(z[n,j] + B[i,j]) is built once per (n, i, j) in a
// small thread-local buffer (it stays in cache) and every kernel tap reads it: the paper's
// "caching" FLOP convention (the 1x1 / 3x3 forward makes it in registers instead, a few
// positions at a time); nothing out_channels-fold ever exists in memory, and backward
// rebuilds the planes instead of saving them. Padding stays zero because it is added after
// the activation (spec section 1).
//
// Two kernel families:
//  - namespace lanes (kernel sizes 1 and 3, what ResNets use): vectors over 16 (AVX-512) or 8
//    (AVX2) output channels, see the comment there. The fast path.
//  - the plane kernels below (any other kernel size): vectors over positions, one plane per
//    (n, i, j) in "phase" layout (padded column u lives in phase u % s at index u / s, so a
//    stride-s tap reads contiguous memory).
// Vectors are simd.h's GCC/Clang vector extensions, 64 bytes in the AVX-512 build and 32 bytes
// in the AVX2 / portable builds (biasbench/kernels/build.py picks the width from the CPU).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "simd.h"

// Partial sums of the weight and bias gradients are kept per chunk of samples and added in
// chunk order. The chunks depend on the batch size only, never on the thread count, so the
// gradients are the same bits with 1 or 16 threads (a seed fixes a run on any CPU).
static inline int batch_chunks(int n) { return std::max(1, std::min(n, 32)); }


namespace {

using simd::Scratch;
using simd::V;

struct Geo {  // geometry shared by forward and backward
  int N, C, H, W, O, k, s, pad, Ho, Wo, Hp, Wp, Wq;
  std::vector<int64_t> taps;  // tap(0, a, c) for every (a, c), so inner loops never divide
  int64_t plane() const { return int64_t(s) * Hp * Wq; }
  // offset of padded position (row r, column u) in phase layout
  int64_t at(int r, int u) const { return (int64_t(u % s) * Hp + r) * Wq + u / s; }
  // offset of the element tap (a, c) reads for output (y, x=0)
  int64_t tap(int y, int a, int c) const { return (int64_t(c % s) * Hp + y * s + a) * Wq + c / s; }
};

Geo make_geo(const at::Tensor& z, const at::Tensor& w, int64_t stride, int64_t pad) {
  Geo g;
  g.N = z.size(0); g.C = z.size(1); g.H = z.size(2); g.W = z.size(3); g.O = w.size(0);
  g.k = w.size(2); g.s = stride; g.pad = pad;
  g.Ho = (g.H + 2 * g.pad - g.k) / g.s + 1; g.Wo = (g.W + 2 * g.pad - g.k) / g.s + 1;
  g.Hp = g.H + 2 * g.pad; g.Wp = g.W + 2 * g.pad; g.Wq = (g.Wp + g.s - 1) / g.s;
  for (int a = 0; a < g.k; ++a)
    for (int c = 0; c < g.k; ++c) g.taps.push_back(g.tap(0, a, c));
  return g;
}

// P (phase layout, borders already zero) <- relu(z + bias) on the interior.
template <typename T>
inline void build_plane(const Geo& g, const T* __restrict__ z, T bias, T* __restrict__ P) {
  using Vt = V<T>;
  for (int y = 0; y < g.H; ++y) {
    const T* zr = z + int64_t(y) * g.W;
    if (g.s == 1) {
      T* prow = P + g.at(y + g.pad, g.pad);
      int x = 0;
      const typename Vt::type bv = Vt::splat(bias);
      for (; x + Vt::L <= g.W; x += Vt::L) Vt::store(prow + x, Vt::relu(Vt::load(zr + x) + bv));
      for (; x < g.W; ++x) prow[x] = std::max(zr[x] + bias, T(0));
    } else {  // walk the phases incrementally instead of dividing per element
      T* rows = P + int64_t(y + g.pad) * g.Wq;
      const int64_t phase = int64_t(g.Hp) * g.Wq;
      int x = 0;
      if (g.s == 2) {  // 2L columns at a time: relu, then split even / odd columns
        const typename Vt::type bv = Vt::splat(bias);
        T* pe = rows + (g.pad % 2) * phase + g.pad / 2;        // x even -> this phase
        T* po = rows + ((g.pad + 1) % 2) * phase + (g.pad + 1) / 2;  // x odd
        for (; x + 2 * Vt::L <= g.W; x += 2 * Vt::L) {
          typename Vt::type e, o;
          Vt::split(Vt::relu(Vt::load(zr + x) + bv), Vt::relu(Vt::load(zr + x + Vt::L) + bv), e, o);
          Vt::store(pe + x / 2, e);
          Vt::store(po + x / 2, o);
        }
      }
      int ph = (x + g.pad) % g.s, q = (x + g.pad) / g.s;
      for (; x < g.W; ++x) {
        rows[ph * phase + q] = std::max(zr[x] + bias, T(0));
        if (++ph == g.s) { ph = 0; ++q; }
      }
    }
  }
}

template <typename T, int K, int S>
void forward_impl(const Geo& g, const T* z, const T* w, const T* b, T* out) {
  using Vt = V<T>;
  using VT = typename Vt::type;
  const int k = K ? K : g.k;
  const int64_t* tp = g.taps.data();
  at::parallel_for(0, int64_t(g.N) * g.O, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> pbuf(g.plane(), T(0));
    T* P = pbuf.data();
    for (int64_t t = begin; t < end; ++t) {
      const int n = int(t / g.O), i = int(t % g.O);
      T* o = out + t * g.Ho * g.Wo;
      std::fill(o, o + int64_t(g.Ho) * g.Wo, T(0));
      for (int j = 0; j < g.C; ++j) {
        build_plane(g, z + (int64_t(n) * g.C + j) * g.H * g.W, b[int64_t(i) * g.C + j], P);
        const T* wij = w + (int64_t(i) * g.C + j) * k * k;
        for (int y = 0; y < g.Ho; ++y) {
          T* orow = o + int64_t(y) * g.Wo;
          const T* prow = P + int64_t(y) * S * g.Wq;
          int x = 0;
          for (; x + Vt::L <= g.Wo; x += Vt::L) {
            VT acc = Vt::load(orow + x);
            for (int a = 0; a < k; ++a)
              for (int c = 0; c < k; ++c) acc += Vt::splat(wij[a * k + c]) * Vt::load(prow + tp[a * k + c] + x);
            Vt::store(orow + x, acc);
          }
          for (; x < g.Wo; ++x) {
            T acc = orow[x];
            for (int a = 0; a < k; ++a)
              for (int c = 0; c < k; ++c) acc += wij[a * k + c] * prow[tp[a * k + c] + x];
            orow[x] = acc;
          }
        }
      }
    }
  });
}

template <typename T, int K, int S>
void backward_impl(const Geo& g, const T* z, const T* w, const T* b, const T* grad, T* gz, T* gw,
                   T* gb) {
  using Vt = V<T>;
  using VT = typename Vt::type;
  const int k = K ? K : g.k;
  const int kk = k * k;
  const int64_t* tp = g.taps.data();
  // Stride 1: the input gradient gathers from grad zero-padded by k-1 on every side.
  const int Gh = g.Ho + 2 * (k - 1), Gw = g.Wo + 2 * (k - 1);
  // Samples are taken NB at a time inside each (j, i) pair, so the dW / dB vector accumulators
  // stay in registers over NB planes: small planes (8x8) would otherwise spend most of their
  // time on horizontal sums.
  const int NB = std::max(1, std::min(16, 2048 / std::max(1, g.H * g.W)));
  // One weight/bias-gradient accumulator per batch range, summed at the end (no atomics).
  const int nchunks = batch_chunks(g.N);
  const int64_t nw = int64_t(g.O) * g.C * kk, nb = int64_t(g.O) * g.C;
  const int64_t zplane = int64_t(g.H) * g.W, gplane = int64_t(g.Ho) * g.Wo;
  std::vector<T> gw_acc(nchunks * nw, T(0)), gb_acc(nchunks * nb, T(0));
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    std::vector<T> pbuf(g.plane(), T(0)), tbuf(S == 1 ? 0 : g.plane(), T(0));
    std::vector<T> gbuf(S == 1 ? int64_t(NB) * g.O * Gh * Gw : 0, T(0));
    std::vector<VT> accs(kk);
    T* P = pbuf.data();
    for (int64_t ch = cb; ch < ce; ++ch) {
      T* gwl = gw_acc.data() + ch * nw;
      T* gbl = gb_acc.data() + ch * nb;
      const int n0 = int(int64_t(g.N) * ch / nchunks), n1 = int(int64_t(g.N) * (ch + 1) / nchunks);
      for (int nb0 = n0; nb0 < n1; nb0 += NB) {
        const int nb1 = std::min(n1, nb0 + NB);
        if (S == 1)
          for (int n = nb0; n < nb1; ++n)
            for (int i = 0; i < g.O; ++i) {
              const T* gi = grad + (int64_t(n) * g.O + i) * gplane;
              T* Gi = gbuf.data() + (int64_t(n - nb0) * g.O + i) * Gh * Gw;
              for (int y = 0; y < g.Ho; ++y)
                std::copy(gi + int64_t(y) * g.Wo, gi + int64_t(y + 1) * g.Wo,
                          Gi + int64_t(y + k - 1) * Gw + k - 1);
            }
        for (int j = 0; j < g.C; ++j) {
          for (int n = nb0; n < nb1; ++n) {
            T* gzj = gz + (int64_t(n) * g.C + j) * zplane;
            std::fill(gzj, gzj + zplane, T(0));
          }
          for (int i = 0; i < g.O; ++i) {
            const T* wij = w + (int64_t(i) * g.C + j) * kk;
            T* gwij = gwl + (int64_t(i) * g.C + j) * kk;
            VT gbv = Vt::splat(T(0));
            T gbs = T(0);
            for (int e = 0; e < kk; ++e) accs[e] = Vt::splat(T(0));
            for (int n = nb0; n < nb1; ++n) {
              const T* zj = z + (int64_t(n) * g.C + j) * zplane;
              T* gzj = gz + (int64_t(n) * g.C + j) * zplane;
              const T* gi = grad + (int64_t(n) * g.O + i) * gplane;
              build_plane(g, zj, b[int64_t(i) * g.C + j], P);
              // d = relu'(z + B) * sum_taps W * grad (transposed conv); feeds dz and dB.
              if (S == 1) {
                const T* Gi = gbuf.data() + (int64_t(n - nb0) * g.O + i) * Gh * Gw;
                for (int y = 0; y < g.H; ++y) {
                  const T* prow = P + g.at(y + g.pad, g.pad);
                  const T* g0 = Gi + int64_t(y + g.pad + k - 1) * Gw + g.pad + k - 1;
                  T* gzr = gzj + int64_t(y) * g.W;
                  int x = 0;
                  for (; x + Vt::L <= g.W; x += Vt::L) {
                    VT acc = Vt::splat(T(0));
                    for (int a = 0; a < k; ++a)
                      for (int c = 0; c < k; ++c)
                        acc += Vt::splat(wij[a * k + c]) * Vt::load(g0 + x - int64_t(a) * Gw - c);
                    const VT d = Vt::mask(Vt::load(prow + x), acc);
                    Vt::store(gzr + x, Vt::load(gzr + x) + d);
                    gbv += d;
                  }
                  for (; x < g.W; ++x) {
                    T acc = T(0);
                    for (int a = 0; a < k; ++a)
                      for (int c = 0; c < k; ++c) acc += wij[a * k + c] * g0[x - int64_t(a) * Gw - c];
                    const T d = prow[x] > T(0) ? acc : T(0);
                    gzr[x] += d;
                    gbs += d;
                  }
                }
              } else {
    // strided: scatter grad through the taps into a phase-layout plane
                T* Tp = tbuf.data();
                std::fill(Tp, Tp + g.plane(), T(0));
                for (int y = 0; y < g.Ho; ++y) {
                  const T* grow = gi + int64_t(y) * g.Wo;
                  for (int a = 0; a < k; ++a)
                    for (int c = 0; c < k; ++c) {
                      T* dst = Tp + int64_t(y) * S * g.Wq + tp[a * k + c];
                      const T wt = wij[a * k + c];
                      int x = 0;
                      for (; x + Vt::L <= g.Wo; x += Vt::L)
                        Vt::store(dst + x, Vt::load(dst + x) + Vt::splat(wt) * Vt::load(grow + x));
                      for (; x < g.Wo; ++x) dst[x] += wt * grow[x];
                    }
                }
                const int64_t phase = int64_t(g.Hp) * g.Wq;
                for (int y = 0; y < g.H; ++y) {
                  const int64_t row = int64_t(y + g.pad) * g.Wq;
                  T* gzr = gzj + int64_t(y) * g.W;
                  int x = 0;
                  if constexpr (S == 2) {  // back from phase layout, 2L columns at a time
                    const int64_t e0 = row + (g.pad % 2) * phase + g.pad / 2;
                    const int64_t o0 = row + ((g.pad + 1) % 2) * phase + (g.pad + 1) / 2;
                    for (; x + 2 * Vt::L <= g.W; x += 2 * Vt::L) {
                      const VT de = Vt::mask(Vt::load(P + e0 + x / 2), Vt::load(Tp + e0 + x / 2));
                      const VT dd = Vt::mask(Vt::load(P + o0 + x / 2), Vt::load(Tp + o0 + x / 2));
                      VT lo, hi;
                      Vt::merge(de, dd, lo, hi);
                      Vt::store(gzr + x, Vt::load(gzr + x) + lo);
                      Vt::store(gzr + x + Vt::L, Vt::load(gzr + x + Vt::L) + hi);
                      gbv += de + dd;
                    }
                  }
                  int ph = (x + g.pad) % S, q = (x + g.pad) / S;
                  for (; x < g.W; ++x) {
                    const int64_t at = ph * phase + row + q;
                    const T d = P[at] > T(0) ? Tp[at] : T(0);
                    gzr[x] += d;
                    gbs += d;
                    if (++ph == S) { ph = 0; ++q; }
                  }
                }
              }
              // dW[a,c] += sum_p grad[p] * relu(B + zpad[p*s + (a,c)])
              for (int y = 0; y < g.Ho; ++y) {
                const T* grow = gi + int64_t(y) * g.Wo;
                const T* prow = P + int64_t(y) * S * g.Wq;
                int x = 0;
                for (; x + Vt::L <= g.Wo; x += Vt::L) {
                  const VT gv = Vt::load(grow + x);
                  for (int a = 0; a < k; ++a)
                    for (int c = 0; c < k; ++c) accs[a * k + c] += gv * Vt::load(prow + tp[a * k + c] + x);
                }
                for (; x < g.Wo; ++x)
                  for (int a = 0; a < k; ++a)
                    for (int c = 0; c < k; ++c) gwij[a * k + c] += grow[x] * prow[tp[a * k + c] + x];
              }
            }
            gbl[int64_t(i) * g.C + j] += gbs + Vt::sum(gbv);
            for (int e = 0; e < kk; ++e) gwij[e] += Vt::sum(accs[e]);
          }
        }
      }
    }
  });
  for (int64_t e = 0; e < nw; ++e) {
    T acc = T(0);
    for (int ch = 0; ch < nchunks; ++ch) acc += gw_acc[ch * nw + e];
    gw[e] = acc;
  }
  for (int64_t e = 0; e < nb; ++e) {
    T acc = T(0);
    for (int ch = 0; ch < nchunks; ++ch) acc += gb_acc[ch * nb + e];
    gb[e] = acc;
  }
}

// ---------------------------------------------------------------------------------------------
// Lane-blocked kernels (kernel sizes 1 and 3; others use the plane kernels above).
//
// Vectors run over L = simd::kBytes / sizeof(T) consecutive OUTPUT channels i (an "i-block":
// 16 floats with AVX-512, 8 with AVX2) instead of over positions: lane l of A[u][v] holds
// relu(z[j, u-pad, v-pad] + B[i0+l, j]). Every tap is one vector FMA of such a lane-plane
// vector against a weight vector held in a register, for any stride. The forward makes the
// lane-plane vectors in registers, once per register tile of output positions, from the input
// rows (ftile); the backward builds the activated zero-bordered plane once per (sample,
// i-block, j) in a buffer (one broadcast-add and one max per input position for L output
// channels): a stride-s tap only reads every s-th position of it.
// The weight and bias gradients accumulate per lane (no horizontal sums); only dz sums over i,
// once per input position per (n, j) after all i-blocks. Moving between the NCHW tensors and
// the lane layout (forward's output, backward's gradient) transposes L x L blocks in registers.
// Output channels past O are zero lanes of the packed weights and biases.
namespace lanes {

// Blocking, per vector width (measured on a 2-core Xeon with AVX-512 and AMX, and with the
// 256-bit build on the same machine and on an AVX2 AMD EPYC; docs/dac_layers.md): FM output
// positions per step of the forward's single rows (a row tile's rows past a multiple of FR),
// DM / DM2 input positions per step of the input gradient at stride 1 / 2, and the forward
// row tile's L1 budget in bytes (its output sums).
constexpr int FM = 4, DM = 4, DM2 = simd::kBytes == 64 ? 8 : 4;
// The forward's register tile, FR x FC output positions (ftile): on the AMD EPYC (one thread)
// 2 x 8 beat 2 x 4, 4 x 4 and 3 x 4 by 5-10% with AVX-512 (16 sums, 9 weights, bias, zero and a
// plane vector: 28 of the 32 registers) and 1 x 4, 2 x 2, 2 x 4 and 4 x 4 by 3-10% with AVX2,
// where the weights spill and are read by the FMAs from L1.
constexpr int FR = 2, FC = 8;
constexpr int64_t kTileBytes = 24576;

template <typename T>
struct Pack {  // w: (i-block, j, tap, lane), b: (i-block, j, lane)
  int IB;
  std::vector<T> w, b;
};

template <typename T>
Pack<T> pack(const Geo& g, const T* w, const T* b) {
  constexpr int L = V<T>::L;
  const int kk = g.k * g.k;
  Pack<T> p;
  p.IB = (g.O + L - 1) / L;
  p.w.assign(int64_t(p.IB) * g.C * kk * L, T(0));
  p.b.assign(int64_t(p.IB) * g.C * L, T(0));
  for (int i = 0; i < g.O; ++i)
    for (int j = 0; j < g.C; ++j) {
      const int64_t blk = int64_t(i / L) * g.C + j;
      p.b[blk * L + i % L] = b[int64_t(i) * g.C + j];
      for (int e = 0; e < kk; ++e) p.w[(blk * kk + e) * L + i % L] = w[(int64_t(i) * g.C + j) * kk + e];
    }
  return p;
}

// Padded rows u0 .. u0+nrows-1 of the lane plane relu(z + bv), row stride Wp*L. Border columns
// are never written, so they keep the zeros the buffer started with; rows outside the input
// are zeroed here.
template <typename T>
inline void build(const Geo& g, const T* __restrict__ zj, typename V<T>::type bv, int u0, int nrows,
                  T* __restrict__ A) {
  using Vt = V<T>;
  constexpr int L = Vt::L;
  const int64_t rs = int64_t(g.Wp) * L;
  for (int r = 0; r < nrows; ++r) {
    const int y = u0 + r - g.pad;
    T* row = A + r * rs;
    if (y < 0 || y >= g.H) {
      std::fill(row, row + rs, T(0));
      continue;
    }
    const T* zr = zj + int64_t(y) * g.W;
    T* dst = row + int64_t(g.pad) * L;
    for (int x = 0; x < g.W; ++x) Vt::store(dst + int64_t(x) * L, Vt::relu(Vt::splat(zr[x]) + bv));
  }
}

// out[l * ostride + p] = lanes[p * L + l] for the first nl lanes and p < np: L x L blocks
// transposed in registers, instead of one scalar load and store per element.
template <typename T>
inline void lanes_to_planes(const T* lanes, int64_t np, T* out, int64_t ostride, int nl) {
  using Vt = V<T>;
  constexpr int L = Vt::L;
  int64_t p = 0;
  for (; p + L <= np; p += L) {
    typename Vt::type r[L];
#pragma GCC unroll 16
    for (int q = 0; q < L; ++q) r[q] = Vt::load(lanes + (p + q) * L);
    Vt::transpose(r);
    for (int l = 0; l < nl; ++l) Vt::store(out + l * ostride + p, r[l]);
  }
  for (; p < np; ++p)
    for (int l = 0; l < nl; ++l) out[l * ostride + p] = lanes[p * L + l];
}

// The inverse, into a bordered lane plane: lane l of position p = (y, x) (x < wo) is
// planes[l * pstride + p], stored at lanes[y * rs + x * L]; lanes nl.. stay as they are (zero).
template <typename T>
inline void planes_to_lanes(const T* planes, int64_t np, int nl, int wo, T* lanes, int64_t rs) {
  using Vt = V<T>;
  constexpr int L = Vt::L;
  const int64_t pstride = np;
  int64_t p = 0;
  for (; p + L <= np; p += L) {
    typename Vt::type r[L];
    for (int l = 0; l < L; ++l) r[l] = l < nl ? Vt::load(planes + l * pstride + p) : Vt::splat(T(0));
    Vt::transpose(r);
    int y = int(p / wo), x = int(p % wo);
#pragma GCC unroll 16
    for (int q = 0; q < L; ++q) {
      Vt::store(lanes + y * rs + int64_t(x) * L, r[q]);
      if (++x == wo) { x = 0; ++y; }
    }
  }
  for (; p < np; ++p)
    for (int l = 0; l < nl; ++l) lanes[(p / wo) * rs + (p % wo) * L + l] = planes[l * pstride + p];
}

// Sample n's input planes into Z, each padded to Hp x Wp, interiors only: the border keeps the
// -inf the buffer was filled with once, and relu(-inf + B) = 0 is exactly the zero padding.
// Rows are copied 8 elements at a time (a fixed-size memcpy is one vector move; a call to
// memcpy per 8-float row of the 8x8 planes cost as much as a tenth of the forward).
template <typename T>
inline void bordered_planes(const Geo& g, const T* __restrict__ zn, T* __restrict__ Z) {
  const int64_t zs = int64_t(g.Hp) * g.Wp;
  for (int j = 0; j < g.C; ++j)
    for (int y = 0; y < g.H; ++y) {
      const T* src = zn + (int64_t(j) * g.H + y) * g.W;
      T* dst = Z + j * zs + int64_t(y + g.pad) * g.Wp + g.pad;
      int x = 0;
      for (; x + 8 <= g.W; x += 8) std::memcpy(dst + x, src + x, 8 * sizeof(T));
      for (; x < g.W; ++x) dst[x] = src[x];
    }
}

// A TR x TC block of output positions (TR rows, TC columns; rows os apart in o) for one input
// channel: o[y, m] += sum_(a,b) W[a,b] relu(B + zpad[y*s + a, m*s + b]). Each lane-plane vector
// relu(B + zpad) the block reads is made once in a register from the bordered input rows (zs
// apart in zrow: a broadcast-add and a max) and feeds every (position, tap) it serves; nothing
// L-fold is stored. Each position adds its taps in (a, b) order onto the running sum, as before.
template <typename T, int K, int S, int TR, int TC>
inline void ftile(const typename V<T>::type* wr, typename V<T>::type bv, const T* zrow, int64_t zs,
                  T* o, int64_t os) {
  using Vt = V<T>;
  constexpr int L = Vt::L;
  constexpr int NR = (TR - 1) * S + K, NC = (TC - 1) * S + K;  // plane rows / columns read
  typename Vt::type acc[TR][TC];
#pragma GCC unroll 8
  for (int y = 0; y < TR; ++y)
#pragma GCC unroll 8
    for (int m = 0; m < TC; ++m) acc[y][m] = Vt::load(o + y * os + m * L);
#pragma GCC unroll 16
  for (int r = 0; r < NR; ++r)
#pragma GCC unroll 32
    for (int c = 0; c < NC; ++c) {
      const typename Vt::type v = Vt::relu(Vt::splat(zrow[r * zs + c]) + bv);
#pragma GCC unroll 8
      for (int y = 0; y < TR; ++y)
#pragma GCC unroll 8
        for (int m = 0; m < TC; ++m) {
          const int a = r - y * S, b = c - m * S;
          if (a >= 0 && a < K && b >= 0 && b < K) acc[y][m] += wr[a * K + b] * v;
        }
    }
#pragma GCC unroll 8
  for (int y = 0; y < TR; ++y)
#pragma GCC unroll 8
    for (int m = 0; m < TC; ++m) Vt::store(o + y * os + m * L, acc[y][m]);
}

template <typename T, int K, int S>
void forward(const Geo& g, const T* z, const Pack<T>& pk, T* out) {
  using Vt = V<T>;
  using VT = typename Vt::type;
  constexpr int L = Vt::L, KK = K * K;
  const int IB = pk.IB;
  const int64_t zplane = int64_t(g.H) * g.W, os = int64_t(g.Wo) * L;
  // Output rows per tile: the tile's output sums stay within ~24 KiB (L1).
  int R = g.Ho;
  while (R > 1 && int64_t(R) * os * int64_t(sizeof(T)) > kTileBytes) --R;
  if (R > FR) R -= R % FR;  // whole register tiles in every row tile but the last
  const int64_t zs = int64_t(g.Hp) * g.Wp;
  at::parallel_for(0, int64_t(g.N) * IB, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> Z(0, g.C * zs, false), Oa(1, int64_t(R) * os, false);
    std::fill(Z.p, Z.p + g.C * zs, -std::numeric_limits<T>::infinity());
    int zn = -1;  // the sample whose planes Z holds: consecutive tasks share it
    for (int64_t t = begin; t < end; ++t) {
      const int n = int(t / IB), ib = int(t % IB);
      const int nl = std::min(L, g.O - ib * L);
      if (n != zn) bordered_planes(g, z + int64_t(n) * g.C * zplane, Z.p);
      zn = n;
      for (int y0 = 0; y0 < g.Ho; y0 += R) {
        const int rows = std::min(R, g.Ho - y0);
        std::fill(Oa.p, Oa.p + int64_t(rows) * os, T(0));
        for (int j = 0; j < g.C; ++j) {
          const int64_t blk = int64_t(ib) * g.C + j;
          const T* Zj = Z.p + j * zs + int64_t(y0) * S * g.Wp;
          const VT bv = Vt::load(pk.b.data() + blk * L);
          VT wr[KK];
          for (int e = 0; e < KK; ++e) wr[e] = Vt::load(pk.w.data() + (blk * KK + e) * L);
          int yy = 0;
          for (; yy + FR <= rows; yy += FR) {  // FR x FC tiles, then single columns
            T* orow = Oa.p + yy * os;
            const T* zrow = Zj + int64_t(yy) * S * g.Wp;
            int x = 0;
            for (; x + FC <= g.Wo; x += FC)
              ftile<T, K, S, FR, FC>(wr, bv, zrow + x * S, g.Wp, orow + int64_t(x) * L, os);
            for (; x < g.Wo; ++x)
              ftile<T, K, S, FR, 1>(wr, bv, zrow + x * S, g.Wp, orow + int64_t(x) * L, os);
          }
          for (; yy < rows; ++yy) {  // the row tile's last rows, one at a time
            T* orow = Oa.p + yy * os;
            const T* zrow = Zj + int64_t(yy) * S * g.Wp;
            int x = 0;
            for (; x + FM <= g.Wo; x += FM)
              ftile<T, K, S, 1, FM>(wr, bv, zrow + x * S, g.Wp, orow + int64_t(x) * L, os);
            for (; x < g.Wo; ++x) ftile<T, K, S, 1, 1>(wr, bv, zrow + x * S, g.Wp, orow + int64_t(x) * L, os);
          }
        }
        lanes_to_planes(Oa.p, int64_t(rows) * g.Wo, out + ((int64_t(n) * g.O + ib * L) * g.Ho + y0) * g.Wo,
                        int64_t(g.Ho) * g.Wo, nl);
      }
    }
  });
}

// Sum of the L lanes of each of L consecutive vectors, as one vector (pairwise, by shuffles).
template <typename T>
inline typename V<T>::type hsum_block(const T* M) {
  using Vt = V<T>;
  typename Vt::type buf[Vt::L], e, o;
  for (int q = 0; q < Vt::L; ++q) buf[q] = Vt::load(M + q * Vt::L);
  for (int w = Vt::L; w > 1; w /= 2)
    for (int q = 0; q < w / 2; ++q) {
      Vt::split(buf[2 * q], buf[2 * q + 1], e, o);
      buf[q] = e + o;
    }
  return buf[0];
}

// Where one input row's d = relu'(A) * t goes: the lane sums dr (the first i-block stores, later
// ones add) and db, as two partial sums (a shorter add chain).
template <typename T, bool FIRST>
struct DRow {
  using Vt = V<T>;
  using VT = typename Vt::type;
  const T* arow;
  T* dr;
  VT dbs[2];
  DRow(const T* a, T* d, VT db) : arow(a), dr(d), dbs{db, Vt::splat(T(0))} {}
  inline void put(int x, VT t) {
    const VT d = Vt::mask(Vt::load(arow + int64_t(x) * Vt::L), t);
    T* dp = dr + int64_t(x) * Vt::L;
    Vt::store(dp, FIRST ? d : Vt::load(dp) + d);
    dbs[x & 1] += d;
  }
  VT total() const { return dbs[0] + dbs[1]; }
};

// Stride 1, all H input rows: d[y, x] = relu'(A[y, x]) * sum_(a,b) W[a,b] G[y - a, x - b] into
// DRow, row after row (rows advance by gs in G, rs in A, W * L in D: a small plane's rows stay
// in one call). g0 / arow point at row 0, x = 0. M positions at a time: each gradient column is
// loaded once per tap row and feeds every (m, b) it serves (K FMAs per load), and the M sums are
// independent FMA chains.
template <typename T, int K, int M, bool FIRST>
inline void drows1(const typename V<T>::type* wr, const T* g0, int64_t gs, const T* arow, int64_t rs,
                   T* dr, int W, int H, typename V<T>::type& db) {
  using Vt = V<T>;
  using VT = typename Vt::type;
  constexpr int L = Vt::L;
  for (int y = 0; y < H; ++y, g0 += gs, arow += rs, dr += int64_t(W) * L) {
    DRow<T, FIRST> out(arow, dr, db);
    int x = 0;
    for (; x + M <= W; x += M) {
      VT t[M];
#pragma GCC unroll 16
      for (int m = 0; m < M; ++m) t[m] = Vt::splat(T(0));
      const T* gx = g0 + int64_t(x) * L;
#pragma GCC unroll 8
      for (int a = 0; a < K; ++a)
#pragma GCC unroll 32
        for (int c = 1 - K; c < M; ++c) {  // gradient column x + c
          const VT v = Vt::load(gx - a * gs + c * L);
#pragma GCC unroll 16
          for (int m = 0; m < M; ++m) {
            const int b = m - c;
            if (b >= 0 && b < K) t[m] += wr[a * K + b] * v;
          }
        }
#pragma GCC unroll 16
      for (int m = 0; m < M; ++m) out.put(x + m, t[m]);
    }
    for (; x < W; ++x) {
      VT t = Vt::splat(T(0));
      for (int a = 0; a < K; ++a)
        for (int b = 0; b < K; ++b) t += wr[a * K + b] * Vt::load(g0 + int64_t(x - b) * L - a * gs);
      out.put(x, t);
    }
    db = out.total();
  }
}

// Stride 2, one input row u (row phase RA = u % 2, column phase P0 = pad % 2 of x = 0): the
// taps reaching input column v are those with b = v (mod 2), reading gradient column (v - b) / 2
// of gradient row (u - a) / 2. M positions at a time (M even, so the phases of position m are
// compile-time constants); each gradient column is loaded once per tap row and feeds every
// (m, b) it serves. g0 points at the gradient for row (u - RA) / 2 and column (pad - P0) / 2
// (x = 0's pair), arow at A for x = 0.
template <typename T, int K, int M, int P0, int RA, bool FIRST>
inline void drow2(const typename V<T>::type* wr, const T* g0, int64_t gs, const T* arow, T* dr, int W,
                  int pad, typename V<T>::type& db) {
  using Vt = V<T>;
  using VT = typename Vt::type;
  constexpr int L = Vt::L;
  static_assert(M % 2 == 0, "whole column pairs");
  constexpr int CMIN = (P0 - (K - 1) - 1) / 2, CMAX = (P0 + M - 1) / 2;  // gradient columns read
  DRow<T, FIRST> out(arow, dr, db);
  int x = 0;
  for (; x + M <= W; x += M) {
    VT t[M];
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) t[m] = Vt::splat(T(0));
    const T* gx = g0 + int64_t(x / 2) * L;
#pragma GCC unroll 4
    for (int a = RA; a < K; a += 2)
#pragma GCC unroll 16
      for (int c = CMIN; c <= CMAX; ++c) {
        bool used = false;
#pragma GCC unroll 16
        for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
          for (int b = 0; b < K; ++b) used |= (P0 + m - b) % 2 == 0 && (P0 + m - b) / 2 == c;
        if (!used) continue;
        const VT v = Vt::load(gx - ((a - RA) / 2) * gs + c * L);
#pragma GCC unroll 16
        for (int m = 0; m < M; ++m)
#pragma GCC unroll 8
          for (int b = 0; b < K; ++b)
            if ((P0 + m - b) % 2 == 0 && (P0 + m - b) / 2 == c) t[m] += wr[a * K + b] * v;
      }
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) out.put(x + m, t[m]);
  }
  for (; x < W; ++x) {  // the last positions: the same sums, taps chosen at run time
    VT t = Vt::splat(T(0));
    const int v = x + pad, base = (pad - P0) / 2;
    for (int a = RA; a < K; a += 2)
      for (int b = v % 2; b < K; b += 2)
        t += wr[a * K + b] * Vt::load(g0 - ((a - RA) / 2) * gs + int64_t((v - b) / 2 - base) * L);
    out.put(x, t);
  }
  db = out.total();
}

// dW[a,b] += sum_p grad[p] * A[p*s + (a,b)] for one (sample, i-block, j): K*K accumulators,
// one FMA each per position, so the chains are independent and stay in registers. G is the
// lane-layout gradient (zero border E, row stride gs), A the lane plane (row stride rs).
template <typename T, int K, int S>
inline void weight_grad(const Geo& g, const T* G, int64_t gs, int E, const T* A, int64_t rs, T* dw) {
  using Vt = V<T>;
  using VT = typename Vt::type;
  constexpr int L = Vt::L, KK = K * K;
  VT acc[KK];
#pragma GCC unroll 16
  for (int e = 0; e < KK; ++e) acc[e] = Vt::splat(T(0));
  for (int y = 0; y < g.Ho; ++y) {
    const T* grow = G + (y + E) * gs + int64_t(E) * L;
    const T* arow = A + int64_t(y) * S * rs;
    for (int x = 0; x < g.Wo; ++x) {
      const VT g0 = Vt::load(grow + int64_t(x) * L);
      const T* ap = arow + int64_t(x) * S * L;
#pragma GCC unroll 8
      for (int a = 0; a < K; ++a)
#pragma GCC unroll 8
        for (int b = 0; b < K; ++b) acc[a * K + b] += g0 * Vt::load(ap + a * rs + b * L);
    }
  }
#pragma GCC unroll 16
  for (int e = 0; e < KK; ++e) Vt::store(dw + e * L, Vt::load(dw + e * L) + acc[e]);
}

// d = relu'(z + B) * (transposed conv of the gradient) for one (sample, i-block, j), row by
// row: into the lane sums D (the first i-block stores, later ones add) and into db.
template <typename T, int K, int S>
inline void input_grad(const Geo& g, const typename V<T>::type* wr, const T* G, int64_t gs, int E,
                       const T* A, int64_t rs, T* D, bool first, typename V<T>::type& db) {
  constexpr int L = V<T>::L, R1 = S > 1 ? 1 : 0;
  const int p0 = g.pad % S;
  if constexpr (S == 1) {
    const T* g0 = G + int64_t(g.pad + E) * gs + int64_t(g.pad + E) * L;
    const T* a0 = A + g.pad * rs + int64_t(g.pad) * L;
    if (first) drows1<T, K, DM, true>(wr, g0, gs, a0, rs, D, g.W, g.H, db);
    else drows1<T, K, DM, false>(wr, g0, gs, a0, rs, D, g.W, g.H, db);
  } else {  // per row: the row's and the first column's phases pick the tap pattern at compile time
    for (int y = 0; y < g.H; ++y) {
      const int u = y + g.pad, ra = u % S;
      const T* arow = A + u * rs + int64_t(g.pad) * L;
      const T* g0 = G + int64_t((u - ra) / S + E) * gs + int64_t((g.pad - p0) / 2 + E) * L;
      T* dr = D + int64_t(y) * g.W * L;
      auto go = [&](auto fn) { fn(wr, g0, gs, arow, dr, g.W, g.pad, db); };
      switch ((ra << 2) | (p0 << 1) | int(first)) {
        case 0: go(drow2<T, K, DM2, 0, 0, false>); break;
        case 1: go(drow2<T, K, DM2, 0, 0, true>); break;
        case 2: go(drow2<T, K, DM2, R1, 0, false>); break;
        case 3: go(drow2<T, K, DM2, R1, 0, true>); break;
        case 4: go(drow2<T, K, DM2, 0, R1, false>); break;
        case 5: go(drow2<T, K, DM2, 0, R1, true>); break;
        case 6: go(drow2<T, K, DM2, R1, R1, false>); break;
        default: go(drow2<T, K, DM2, R1, R1, true>); break;
      }
    }
  }
}

template <typename T, int K, int S>
void backward(const Geo& g, const T* z, const Pack<T>& pk, const T* grad, T* gz, T* gw, T* gb) {
  static_assert(S == 1 || S == 2, "strides 1 and 2");
  using Vt = V<T>;
  using VT = typename Vt::type;
  constexpr int L = Vt::L, KK = K * K;
  const int IB = pk.IB;
  const int E = (K - 1 + S - 1) / S;  // zero border of the lane-layout gradient
  const int Gh = g.Ho + 2 * E, Gw = g.Wo + 2 * E;
  const int64_t gs = int64_t(Gw) * L, gplane = int64_t(Gh) * gs, rs = int64_t(g.Wp) * L;
  const int64_t zplane = int64_t(g.H) * g.W, oplane = int64_t(g.Ho) * g.Wo;
  const int nchunks = batch_chunks(g.N);
  const int64_t nw = int64_t(IB) * g.C * KK * L, nbias = int64_t(IB) * g.C * L;
  Scratch<T> gw_acc(0, nchunks * nw), gb_acc(1, nchunks * nbias);  // per-chunk partial sums, no atomics
  at::parallel_for(0, nchunks, 1, [&](int64_t cb, int64_t ce) {
    Scratch<T> Gt(2, IB * gplane), A(3, int64_t(g.Hp) * rs), D(4, zplane * L);
    for (int64_t ch = cb; ch < ce; ++ch) {
      T* gwl = gw_acc.p + ch * nw;
      T* gbl = gb_acc.p + ch * nbias;
      const int n0 = int(int64_t(g.N) * ch / nchunks), n1 = int(int64_t(g.N) * (ch + 1) / nchunks);
      for (int n = n0; n < n1; ++n) {
        for (int ib = 0; ib < IB; ++ib)  // grad[n] into lane layout (borders stay zero)
          planes_to_lanes(grad + (int64_t(n) * g.O + ib * L) * oplane, oplane, std::min(L, g.O - ib * L),
                          g.Wo, Gt.p + ib * gplane + E * gs + int64_t(E) * L, gs);
        for (int j = 0; j < g.C; ++j) {
          const T* zj = z + (int64_t(n) * g.C + j) * zplane;
          for (int ib = 0; ib < IB; ++ib) {
            const int64_t blk = int64_t(ib) * g.C + j;
            build(g, zj, Vt::load(pk.b.data() + blk * L), 0, g.Hp, A.p);
            VT wr[KK];
            for (int e = 0; e < KK; ++e) wr[e] = Vt::load(pk.w.data() + (blk * KK + e) * L);
            const T* G = Gt.p + ib * gplane;
            weight_grad<T, K, S>(g, G, gs, E, A.p, rs, gwl + blk * KK * L);
            VT db = Vt::splat(T(0));
            input_grad<T, K, S>(g, wr, G, gs, E, A.p, rs, D.p, ib == 0, db);
            Vt::store(gbl + blk * L, Vt::load(gbl + blk * L) + db);
          }
          // dz[n, j, q] = sum over the lanes of D[q]
          T* gzj = gz + (int64_t(n) * g.C + j) * zplane;
          int64_t q = 0;
          for (; q + L <= zplane; q += L) Vt::store(gzj + q, hsum_block(D.p + q * L));
          for (; q < zplane; ++q) {
            T s = T(0);
            for (int l = 0; l < L; ++l) s += D.p[q * L + l];
            gzj[q] = s;
          }
        }
      }
    }
  });
  for (int i = 0; i < g.O; ++i)
    for (int j = 0; j < g.C; ++j) {
      const int64_t blk = int64_t(i / L) * g.C + j;
      T s = T(0);
      for (int ch = 0; ch < nchunks; ++ch) s += gb_acc.p[ch * nbias + blk * L + i % L];
      gb[int64_t(i) * g.C + j] = s;
      for (int e = 0; e < KK; ++e) {
        T w = T(0);
        for (int ch = 0; ch < nchunks; ++ch) w += gw_acc.p[ch * nw + (blk * KK + e) * L + i % L];
        gw[(int64_t(i) * g.C + j) * KK + e] = w;
      }
    }
}

}  // namespace lanes

void check(const at::Tensor& z, const at::Tensor& w, const at::Tensor& b) {
  TORCH_CHECK(z.dim() == 4 && w.dim() == 4 && b.dim() == 2, "dac_cpu: bad ranks");
  TORCH_CHECK(z.is_contiguous() && w.is_contiguous() && b.is_contiguous(), "dac_cpu: contiguous");
  TORCH_CHECK(z.scalar_type() == w.scalar_type() && z.scalar_type() == b.scalar_type(),
              "dac_cpu: dtypes differ");
  TORCH_CHECK(w.size(1) == z.size(1) && b.size(0) == w.size(0) && b.size(1) == w.size(1) &&
                  w.size(2) == w.size(3), "dac_cpu: shapes");
}

at::Tensor dac_forward(const at::Tensor& z, const at::Tensor& w, const at::Tensor& b,
                       int64_t stride, int64_t pad) {
  check(z, w, b);
  const Geo g = make_geo(z, w, stride, pad);
  at::Tensor out = at::empty({g.N, g.O, g.Ho, g.Wo}, z.options());
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "dac_forward", [&] {
    auto args = std::make_tuple(z.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                b.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
    auto run = [&](auto fn) { std::apply([&](auto... a) { fn(g, a...); }, args); };
    // S must be the real stride: 0 is not a wildcard here, so only 1 and 2 are instantiated.
    if (g.k == 3 || g.k == 1) {  // lane-blocked kernels
      const auto pk = lanes::pack(g, w.data_ptr<scalar_t>(), b.data_ptr<scalar_t>());
      const scalar_t* zp = z.data_ptr<scalar_t>();
      scalar_t* op = out.data_ptr<scalar_t>();
      if (g.k == 3 && g.s == 1) lanes::forward<scalar_t, 3, 1>(g, zp, pk, op);
      else if (g.k == 3 && g.s == 2) lanes::forward<scalar_t, 3, 2>(g, zp, pk, op);
      else if (g.k == 1 && g.s == 1) lanes::forward<scalar_t, 1, 1>(g, zp, pk, op);
      else if (g.k == 1 && g.s == 2) lanes::forward<scalar_t, 1, 2>(g, zp, pk, op);
      else TORCH_CHECK(false, "dac_cpu: stride must be 1 or 2");
      return;
    }
    if (g.s == 1) run(forward_impl<scalar_t, 0, 1>);
    else if (g.s == 2) run(forward_impl<scalar_t, 0, 2>);
    else TORCH_CHECK(false, "dac_cpu: stride must be 1 or 2");
  });
  return out;
}

std::vector<at::Tensor> dac_backward(const at::Tensor& z, const at::Tensor& w, const at::Tensor& b,
                                     const at::Tensor& grad, int64_t stride, int64_t pad) {
  check(z, w, b);
  TORCH_CHECK(grad.is_contiguous(), "dac_cpu: grad must be contiguous");
  const Geo g = make_geo(z, w, stride, pad);
  at::Tensor gz = at::empty_like(z), gw = at::empty_like(w), gb = at::empty_like(b);
  AT_DISPATCH_FLOATING_TYPES(z.scalar_type(), "dac_backward", [&] {
    auto args = std::make_tuple(z.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                b.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(),
                                gz.data_ptr<scalar_t>(), gw.data_ptr<scalar_t>(),
                                gb.data_ptr<scalar_t>());
    auto run = [&](auto fn) { std::apply([&](auto... a) { fn(g, a...); }, args); };
    // S must be the real stride: 0 is not a wildcard here, so only 1 and 2 are instantiated.
    if (g.k == 3 || g.k == 1) {  // lane-blocked kernels
      const auto pk = lanes::pack(g, w.data_ptr<scalar_t>(), b.data_ptr<scalar_t>());
      auto lrun = [&](auto fn) {
        fn(g, z.data_ptr<scalar_t>(), pk, grad.data_ptr<scalar_t>(), gz.data_ptr<scalar_t>(),
           gw.data_ptr<scalar_t>(), gb.data_ptr<scalar_t>());
      };
      if (g.k == 3 && g.s == 1) lrun(lanes::backward<scalar_t, 3, 1>);
      else if (g.k == 3 && g.s == 2) lrun(lanes::backward<scalar_t, 3, 2>);
      else if (g.k == 1 && g.s == 1) lrun(lanes::backward<scalar_t, 1, 1>);
      else if (g.k == 1 && g.s == 2) lrun(lanes::backward<scalar_t, 1, 2>);
      else TORCH_CHECK(false, "dac_cpu: stride must be 1 or 2");
      return;
    }
    if (g.s == 1) run(backward_impl<scalar_t, 0, 1>);
    else if (g.s == 2) run(backward_impl<scalar_t, 0, 2>);
    else TORCH_CHECK(false, "dac_cpu: stride must be 1 or 2");
  });
  return {gz, gw, gb};
}

}  // namespace

BIASBENCH_LIBRARY(BIASBENCH_NS, m) {
  m.def("forward(Tensor z, Tensor w, Tensor b, int stride, int pad) -> Tensor");
  m.def("backward(Tensor z, Tensor w, Tensor b, Tensor grad, int stride, int pad) -> Tensor[]");
}

BIASBENCH_LIBRARY_IMPL(BIASBENCH_NS, CPU, m) {
  m.impl("forward", &dac_forward);
  m.impl("backward", &dac_backward);
}
