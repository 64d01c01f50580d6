// Fused DAC conv (ReLU, biases shared over kernel positions) for CPU.
//
//   out[n,i,p] = sum_j sum_(a,b) W[i,j,a,b] relu(B[i,j] + zpad[n,j,p*s+(a,b)])
//
// For every (n, i, j) the activated, zero-bordered plane relu(z[n,j] + B[i,j]) is built once in
// a small thread-local buffer (it stays in L1) and every kernel tap reads it: the paper's
// "caching" FLOP convention; nothing out_channels-fold ever exists in memory, and backward
// rebuilds the planes instead of saving them. Padding stays zero because it is added after
// the activation (spec section 1).
//
// Planes are stored in "phase" layout: padded column u lives in phase u % s at index u / s, so
// a stride-s tap reads contiguous memory and vectorises like stride 1. Vectors are GCC/Clang
// vector extensions (32 bytes): portable C++, AVX2 where -march=native has it.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace {

template <typename T>
struct V {
  static constexpr int L = 32 / sizeof(T);
  typedef T type __attribute__((vector_size(32)));
  static inline type load(const T* p) { type v; std::memcpy(&v, p, sizeof(v)); return v; }
  static inline void store(T* p, type v) { std::memcpy(p, &v, sizeof(v)); }
  static inline type splat(T x) { type v; for (int l = 0; l < L; ++l) v[l] = x; return v; }
  static inline type relu(type v) { const type zero = splat(T(0)); return v > zero ? v : zero; }
  static inline type mask(type m, type v) { const type zero = splat(T(0)); return m > zero ? v : zero; }
  static inline T sum(type v) { T s = T(0); for (int l = 0; l < L; ++l) s += v[l]; return s; }
  // (a0 b0 a1 b1 ...) <-> (a0 a1 ...), (b0 b1 ...): stride-2 columns to / from phase layout
  static inline void split(type lo, type hi, type& even, type& odd) {
    if constexpr (L == 8) {
      even = __builtin_shufflevector(lo, hi, 0, 2, 4, 6, 8, 10, 12, 14);
      odd = __builtin_shufflevector(lo, hi, 1, 3, 5, 7, 9, 11, 13, 15);
    } else {
      even = __builtin_shufflevector(lo, hi, 0, 2, 4, 6);
      odd = __builtin_shufflevector(lo, hi, 1, 3, 5, 7);
    }
  }
  static inline void merge(type even, type odd, type& lo, type& hi) {
    if constexpr (L == 8) {
      lo = __builtin_shufflevector(even, odd, 0, 8, 1, 9, 2, 10, 3, 11);
      hi = __builtin_shufflevector(even, odd, 4, 12, 5, 13, 6, 14, 7, 15);
    } else {
      lo = __builtin_shufflevector(even, odd, 0, 4, 1, 5);
      hi = __builtin_shufflevector(even, odd, 2, 6, 3, 7);
    }
  }
};

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
  const int nchunks = std::max(1, std::min(g.N, at::get_num_threads()));
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
    if (g.k == 3 && g.s == 1) run(forward_impl<scalar_t, 3, 1>);
    else if (g.k == 3 && g.s == 2) run(forward_impl<scalar_t, 3, 2>);
    else if (g.k == 1 && g.s == 1) run(forward_impl<scalar_t, 1, 1>);
    else if (g.k == 1 && g.s == 2) run(forward_impl<scalar_t, 1, 2>);
    else if (g.s == 1) run(forward_impl<scalar_t, 0, 1>);
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
    if (g.k == 3 && g.s == 1) run(backward_impl<scalar_t, 3, 1>);
    else if (g.k == 3 && g.s == 2) run(backward_impl<scalar_t, 3, 2>);
    else if (g.k == 1 && g.s == 1) run(backward_impl<scalar_t, 1, 1>);
    else if (g.k == 1 && g.s == 2) run(backward_impl<scalar_t, 1, 2>);
    else if (g.s == 1) run(backward_impl<scalar_t, 0, 1>);
    else if (g.s == 2) run(backward_impl<scalar_t, 0, 2>);
    else TORCH_CHECK(false, "dac_cpu: stride must be 1 or 2");
  });
  return {gz, gw, gb};
}

}  // namespace

TORCH_LIBRARY(biasbench_dac, m) {
  m.def("forward(Tensor z, Tensor w, Tensor b, int stride, int pad) -> Tensor");
  m.def("backward(Tensor z, Tensor w, Tensor b, Tensor grad, int stride, int pad) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(biasbench_dac, CPU, m) {
  m.impl("forward", &dac_forward);
  m.impl("backward", &dac_backward);
}
