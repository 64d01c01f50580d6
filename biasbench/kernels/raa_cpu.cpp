// Fused RAA (DNRT's response-adaptive activation, spec section 4) for CPU.
//
//   s = w . x + b            one shift per feature vector
//   gelu: y = x Phi(x + s)   relu: y = max(0, x + s)
//
// A feature vector is a row of a (M, C) matrix (1-d: a token) or the C channels of one pixel of
// a (N, C, P) map (2-d: stride P between channels). Forward computes s and y and returns s,
// which is all backward needs besides x and w: 1-d row by row; 2-d per sample, the shifts in
// register blocks of pixels, then y channel row by channel row (contiguous). Backward, per row
// (1-d) or per sample in two passes over its channel rows with ds in L1 (2-d):
//   t_c  = gy_c x_c phi(u_c)  (gelu)   or   gy_c [u_c > 0]  (relu),      u = x + s
//   ds   = sum_c t_c
//   dx_c = gy_c Phi(u_c) + t_c + ds w_c   (gelu)   or   t_c + ds w_c  (relu)
//   dw_c = sum over vectors of ds x_c,    db = sum over vectors of ds
// dw and db are summed per chunk of vectors and the chunks added in chunk order; the chunks
// depend on the shapes only, so the gradients are the same bits for any thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "simd.h"
#if defined(__AVX2__) || defined(__AVX512F__)
#include <sleef.h>  // ships with torch; libtorch_cpu exports it
#define BIASBENCH_SLEEF 1
#endif

namespace {

// Scalar lanes with V<T>'s interface, for the columns left over after whole vectors.
template <typename T>
struct S1 {
  static constexpr int L = 1;
  typedef T type;
  static inline type load(const T* p) { return *p; }
  static inline void store(T* p, type v) { *p = v; }
  static inline type splat(T x) { return x; }
  static inline type relu(type v) { return v > T(0) ? v : T(0); }
  static inline type mask(type m, type v) { return m > T(0) ? v : T(0); }
  static inline T sum(type v) { return v; }
  static inline type erf(type v) { return std::erf(v); }
  static inline type exp(type v) { return std::exp(v); }
};

// The body of a vector math function `name`: Sleef's 1-ulp version for this width and type where
// torch ships Sleef, std::name lane by lane otherwise.
#if BIASBENCH_SLEEF && defined(__AVX512F__)
#define SLEEF_512(name)                                                                              \
  if constexpr (simd::kBytes == 64 && sizeof(T) == 4) return (type)Sleef_##name##f16_u10((__m512)v); \
  if constexpr (simd::kBytes == 64 && sizeof(T) == 8) return (type)Sleef_##name##d8_u10((__m512d)v);
#else
#define SLEEF_512(name)
#endif
#if BIASBENCH_SLEEF
#define SLEEF_256(name)                                                                              \
  if constexpr (simd::kBytes == 32 && sizeof(T) == 4) return (type)Sleef_##name##f8_u10((__m256)v);  \
  if constexpr (simd::kBytes == 32 && sizeof(T) == 8) return (type)Sleef_##name##d4_u10((__m256d)v);
#else
#define SLEEF_256(name)
#endif
#define VECTOR_MATH(name)                              \
  static inline type name(type v) {                   \
    SLEEF_512(name)                                    \
    SLEEF_256(name)                                    \
    return each(v, [](T x) { return std::name(x); }); \
  }

// V<T> plus erf and exp.
template <typename T>
struct W : simd::V<T> {
  using Vt = simd::V<T>;
  using type = typename Vt::type;
  template <typename F>
  static inline type each(type v, F f) {
    for (int l = 0; l < Vt::L; ++l) v[l] = f(v[l]);
    return v;
  }
  VECTOR_MATH(erf)
  VECTOR_MATH(exp)
};

// exp(x) of float lanes with x <= 0 (the Gaussian's exp(-u^2 / 2)), inline: Cephes' expf
// (round x log2(e) to n, r = x - n ln 2 in two parts, a degree-5 polynomial, times 2^n built in
// the exponent bits; about 1 ulp). x below -87.3 is clamped there (2^-126, where the result
// only multiplies terms that are already 0 to float precision); NaN stays NaN. Inline, it
// spares the call into Sleef, across which every vector register is caller-saved.
template <typename Vt>
inline typename Vt::type exp_nonpositive(typename Vt::type x) {
  using VT = typename Vt::type;
  typedef int32_t IV __attribute__((vector_size(sizeof(VT))));
  const VT lo = Vt::splat(-87.3f);
  x = x < lo ? lo : x;
  const VT magic = Vt::splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const VT n = (x * Vt::splat(1.44269504088896341f) + magic) - magic;
  const VT r = (x - n * Vt::splat(0.693359375f)) - n * Vt::splat(-2.12194440e-4f);
  VT p = Vt::splat(1.9875691500e-4f);
  p = p * r + Vt::splat(1.3981999507e-3f);
  p = p * r + Vt::splat(8.3334519073e-3f);
  p = p * r + Vt::splat(4.1665795894e-2f);
  p = p * r + Vt::splat(1.6666665459e-1f);
  p = p * r + Vt::splat(5.0000001201e-1f);
  const VT e = p * (r * r) + r + Vt::splat(1.0f);
  const IV bits = (__builtin_convertvector(n, IV) + 127) << 23;
  VT scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return e * scale;
}

// Phi(u) = (1 + erf(u / sqrt 2)) / 2 and phi(u) = exp(-u^2 / 2) / sqrt(2 pi). float vectors use
// the erf of Abramowitz & Stegun 7.1.26 (absolute error 1.5e-7), as PyTorch's own CPU GELU
// does, with the exp it needs (exp_nonpositive) shared with phi: one exp per element, forward or
// backward.
// Doubles (and scalar tails) use a 1-ulp erf.
template <typename Vt, typename T>
inline void gauss(typename Vt::type u, typename Vt::type& cdf, typename Vt::type* pdf) {
  using VT = typename Vt::type;
  if constexpr (sizeof(T) == 4 && Vt::L > 1) {
    const VT e = exp_nonpositive<Vt>(u * u * Vt::splat(T(-0.5f)));
    const VT zero = Vt::splat(T(0)), au = u < zero ? -u : u;
    const VT t = Vt::splat(T(1)) / (Vt::splat(T(1)) + Vt::splat(T(0.3275911f * M_SQRT1_2)) * au);
    VT r = Vt::splat(T(1.061405429f)) * t + Vt::splat(T(-1.453152027f));
    r = r * t + Vt::splat(T(1.421413741f));
    r = r * t + Vt::splat(T(-0.284496736f));
    r = r * t + Vt::splat(T(0.254829592f));
    const VT h = Vt::splat(T(0.5f)) * r * t * e;  // (1 - erf(|u| / sqrt 2)) / 2
    cdf = u < zero ? h : Vt::splat(T(1)) - h;
    if (pdf) *pdf = e * Vt::splat(T(0.3989422804014327));
  } else {
    cdf = Vt::splat(T(0.5)) + Vt::splat(T(0.5)) * Vt::erf(u * Vt::splat(T(M_SQRT1_2)));
    if (pdf) *pdf = Vt::exp(u * u * Vt::splat(T(-0.5))) * Vt::splat(T(0.3989422804014327));
  }
}

template <typename Vt, typename T, bool GELU>
inline typename Vt::type act(typename Vt::type x, typename Vt::type s) {
  if constexpr (GELU) {
    typename Vt::type cdf;
    gauss<Vt, T>(x + s, cdf, nullptr);
    return x * cdf;
  } else {
    return Vt::relu(x + s);
  }
}

// Backward of one element: returns t (dy/ds times gy) and sets pre = the part of dx without
// the ds w term.
template <typename Vt, typename T, bool GELU>
inline typename Vt::type grad_parts(typename Vt::type x, typename Vt::type s, typename Vt::type gy,
                                    typename Vt::type& pre) {
  const typename Vt::type u = x + s;
  if constexpr (GELU) {
    typename Vt::type cdf, pdf;
    gauss<Vt, T>(u, cdf, &pdf);
    const typename Vt::type t = gy * x * pdf;
    pre = gy * cdf + t;
    return t;
  } else {
    const typename Vt::type t = Vt::mask(u, gy);
    pre = t;
    return t;
  }
}

// Same rule as the DAC kernels: min(vectors, 32) chunks of consecutive vectors (samples for 2-d).
inline int64_t chunks_for(int64_t n) { return std::max<int64_t>(1, std::min<int64_t>(n, 32)); }

// dw[c] and db as the sums of the chunks' partial sums (nch x C and nch), in chunk order.
template <typename T>
void add_chunks(const std::vector<T>& part_w, const std::vector<T>& part_b, int64_t nch, int64_t C, T* gw,
                T* gb) {
  for (int64_t c = 0; c < C; ++c) {
    T acc = T(0);
    for (int64_t ch = 0; ch < nch; ++ch) acc += part_w[ch * C + c];
    gw[c] = acc;
  }
  T acc = T(0);
  for (int64_t ch = 0; ch < nch; ++ch) acc += part_b[ch];
  gb[0] = acc;
}

// ---- 2-d: x (N, C, P), vectors over positions ----------------------------------------------

// The shifts of Q vectors of positions: b + sum_c w_c x_c in channel order, in registers.

template <typename Vt, typename T, int Q>
inline void shift2d_block(const T* x, const T* w, T b, T* s, int64_t C, int64_t P) {
  using VT = typename Vt::type;
  VT acc[Q];
  for (int q = 0; q < Q; ++q) acc[q] = Vt::splat(b);
  for (int64_t c = 0; c < C; ++c) {
    const VT wc = Vt::splat(w[c]);
    for (int q = 0; q < Q; ++q) acc[q] += wc * Vt::load(x + c * P + q * Vt::L);
  }
  for (int q = 0; q < Q; ++q) Vt::store(s + q * Vt::L, acc[q]);
}

constexpr int kQ = 4;  // vectors of positions per block of the shift's dot product, in registers

// The positions [p0, p1) of one sample, in blocks of kQ vectors, then single vectors, then
// scalars; fn(Vt-tag, Q, offset) is called per block.
template <typename T, typename Fn>
inline void position_blocks(int64_t p0, int64_t p1, Fn fn) {
  constexpr int L = simd::V<T>::L;
  int64_t p = p0;
  for (; p + kQ * L <= p1; p += kQ * L) fn(W<T>{}, std::integral_constant<int, kQ>{}, p);
  for (; p + L <= p1; p += L) fn(W<T>{}, std::integral_constant<int, 1>{}, p);
  for (; p < p1; ++p) fn(S1<T>{}, std::integral_constant<int, 1>{}, p);
}

// The activation of one sample's C channel rows, each row contiguous, from its shifts s.
template <typename T, bool GELU>
inline void act2d_rows(const T* x, const T* s, T* y, int64_t C, int64_t P) {
  using Vt = W<T>;
  constexpr int L = Vt::L;
  for (int64_t c = 0; c < C; ++c) {
    const T* xr = x + c * P;
    T* yr = y + c * P;
    int64_t p = 0;
    for (; p + L <= P; p += L) Vt::store(yr + p, act<Vt, T, GELU>(Vt::load(xr + p), Vt::load(s + p)));
    for (; p < P; ++p) yr[p] = act<S1<T>, T, GELU>(xr[p], s[p]);
  }
}

template <typename T, bool GELU>
void forward2d(const T* x, const T* w, T b, T* y, T* s, int64_t N, int64_t C, int64_t P) {
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const int64_t off = n * C * P;
      // The shifts of the whole sample first, then the activation row by row: both passes read
      // x in contiguous runs. (Blocks of 64 pixels through all channels, shift and activation
      // together, ran 7% slower forward and 30% slower backward on 16 x 32 x 32 maps, likely
      // because a pixel's channels lie 4 KiB apart there and share L1 sets; at 16 x 16 and
      // 8 x 8 the two orders were within noise.)
      position_blocks<T>(0, P, [&](auto tag, auto q, int64_t p) {
        using Vt = decltype(tag);
        shift2d_block<Vt, T, decltype(q)::value>(x + off + p, w, b, s + n * P + p, C, P);
      });
      act2d_rows<T, GELU>(x + off, s + n * P, y + off, C, P);
    }
  });
}

// Backward of one sample, channel rows [0, C) each contiguous, in two passes over the rows:
// gx's part without the ds w term and ds (P lanes, in L1), then the ds w term and this chunk's
// dw lane sums (dwv: C vectors, lane l taking the positions p = l mod L in order; dws: the scalar
// tail) and db.
template <typename T, bool GELU>
inline void backward2d_sample(const T* x, const T* s, const T* w, const T* gy, T* gx, T* ds,
                              int64_t C, int64_t P, T* dwv, T* dws, typename W<T>::type& dbv, T& dbs) {
  using Vt = W<T>;
  using VT = typename Vt::type;
  constexpr int L = Vt::L;
  const int64_t PV = P / L * L;  // positions in whole vectors; the rest go lane by lane
  std::fill(ds, ds + P, T(0));
  for (int64_t c = 0; c < C; ++c) {
    const int64_t o = c * P;
    for (int64_t p = 0; p < PV; p += L) {
      VT pre;
      const VT t = grad_parts<Vt, T, GELU>(Vt::load(x + o + p), Vt::load(s + p), Vt::load(gy + o + p), pre);
      Vt::store(gx + o + p, pre);
      Vt::store(ds + p, Vt::load(ds + p) + t);
    }
    for (int64_t p = PV; p < P; ++p) {
      T pre;
      ds[p] += grad_parts<S1<T>, T, GELU>(x[o + p], s[p], gy[o + p], pre);
      gx[o + p] = pre;
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    const int64_t o = c * P;
    const VT wc = Vt::splat(w[c]);
    VT dw = Vt::load(dwv + c * L);
    for (int64_t p = 0; p < PV; p += L) {
      const VT dsv = Vt::load(ds + p);
      Vt::store(gx + o + p, Vt::load(gx + o + p) + dsv * wc);
      dw += dsv * Vt::load(x + o + p);
    }
    Vt::store(dwv + c * L, dw);
    for (int64_t p = PV; p < P; ++p) {
      gx[o + p] += ds[p] * w[c];
      dws[c] += ds[p] * x[o + p];
    }
  }
  for (int64_t p = 0; p < PV; p += L) dbv += Vt::load(ds + p);
  for (int64_t p = PV; p < P; ++p) dbs += ds[p];
}

template <typename T, bool GELU>
void backward2d(const T* x, const T* s, const T* w, const T* gy, T* gx, T* gw, T* gb, int64_t N,
                int64_t C, int64_t P) {
  constexpr int L = simd::V<T>::L;
  const int64_t nch = chunks_for(N);
  std::vector<T> part_w(nch * C), part_b(nch);
  at::parallel_for(0, nch, 1, [&](int64_t cb, int64_t ce) {
    std::vector<T> dwv(C * L), dws(C), ds(P);
    for (int64_t ch = cb; ch < ce; ++ch) {
      std::fill(dwv.begin(), dwv.end(), T(0));
      std::fill(dws.begin(), dws.end(), T(0));
      typename W<T>::type dbv = W<T>::splat(T(0));
      T dbs = T(0);
      for (int64_t n = N * ch / nch; n < N * (ch + 1) / nch; ++n) {
        const int64_t off = n * C * P;
        backward2d_sample<T, GELU>(x + off, s + n * P, w, gy + off, gx + off, ds.data(), C, P, dwv.data(),
                                   dws.data(), dbv, dbs);
      }
      for (int64_t c = 0; c < C; ++c)
        part_w[ch * C + c] = W<T>::sum(W<T>::load(dwv.data() + c * L)) + dws[c];
      part_b[ch] = W<T>::sum(dbv) + dbs;
    }
  });
  add_chunks(part_w, part_b, nch, C, gw, gb);
}

// ---- 1-d: x (M, C), vectors over the features of one row -------------------------------------

template <typename T>
inline T dot_row(const T* x, const T* w, int64_t C) {
  using Vt = W<T>;
  constexpr int L = Vt::L;
  typename Vt::type a0 = Vt::splat(T(0)), a1 = a0;
  int64_t c = 0;
  for (; c + 2 * L <= C; c += 2 * L) {
    a0 += Vt::load(x + c) * Vt::load(w + c);
    a1 += Vt::load(x + c + L) * Vt::load(w + c + L);
  }
  for (; c + L <= C; c += L) a0 += Vt::load(x + c) * Vt::load(w + c);
  T r = Vt::sum(a0 + a1);
  for (; c < C; ++c) r += x[c] * w[c];
  return r;
}

template <typename T, bool GELU>
void forward1d(const T* x, const T* w, T b, T* y, T* s, int64_t M, int64_t C) {
  using Vt = W<T>;
  constexpr int L = Vt::L;
  at::parallel_for(0, M, std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1)), [&](int64_t begin, int64_t end) {
    for (int64_t m = begin; m < end; ++m) {
      const T* xr = x + m * C;
      T* yr = y + m * C;
      const T sm = dot_row(xr, w, C) + b;
      s[m] = sm;
      const typename Vt::type sv = Vt::splat(sm);
      int64_t c = 0;
      for (; c + L <= C; c += L) Vt::store(yr + c, act<Vt, T, GELU>(Vt::load(xr + c), sv));
      for (; c < C; ++c) yr[c] = act<S1<T>, T, GELU>(xr[c], sm);
    }
  });
}

template <typename T, bool GELU>
void backward1d(const T* x, const T* s, const T* w, const T* gy, T* gx, T* gw, T* gb, int64_t M,
                int64_t C) {
  using Vt = W<T>;
  using VT = typename Vt::type;
  constexpr int L = Vt::L;
  const int64_t nch = chunks_for(M);
  std::vector<T> part_w(nch * C), part_b(nch);
  at::parallel_for(0, nch, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t ch = cb; ch < ce; ++ch) {
      T* dw = part_w.data() + ch * C;
      std::fill(dw, dw + C, T(0));
      T db = T(0);
      for (int64_t m = M * ch / nch; m < M * (ch + 1) / nch; ++m) {
        const T *xr = x + m * C, *gr = gy + m * C;
        T* gxr = gx + m * C;
        const VT sv = Vt::splat(s[m]);
        VT dsv = Vt::splat(T(0));
        T dss = T(0);
        int64_t c = 0;
        for (; c + L <= C; c += L) {
          VT pre;
          dsv += grad_parts<Vt, T, GELU>(Vt::load(xr + c), sv, Vt::load(gr + c), pre);
          Vt::store(gxr + c, pre);
        }
        for (; c < C; ++c) {
          T pre;
          dss += grad_parts<S1<T>, T, GELU>(xr[c], s[m], gr[c], pre);
          gxr[c] = pre;
        }
        const T ds = Vt::sum(dsv) + dss;
        const VT dv = Vt::splat(ds);
        for (c = 0; c + L <= C; c += L) {
          Vt::store(gxr + c, Vt::load(gxr + c) + dv * Vt::load(w + c));
          Vt::store(dw + c, Vt::load(dw + c) + dv * Vt::load(xr + c));
        }
        for (; c < C; ++c) {
          gxr[c] += ds * w[c];
          dw[c] += ds * xr[c];
        }
        db += ds;
      }
      part_b[ch] = db;
    }
  });
  add_chunks(part_w, part_b, nch, C, gw, gb);
}

// ---- operators ----------------------------------------------------------------------------------

// (vectors, C, P) of x: 2-d (N, C, H, W) -> (N, C, H*W); 1-d (..., C) -> (M, C, 1).
std::vector<int64_t> geometry(const at::Tensor& x, const at::Tensor& w, bool two_d) {
  TORCH_CHECK(x.is_contiguous() && w.is_contiguous(), "raa_cpu: contiguous tensors");
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "raa_cpu: dtypes differ");
  if (two_d) {
    TORCH_CHECK(x.dim() == 4 && x.size(1) == w.numel(), "raa_cpu: x must be (N, C, H, W) with C = w.numel()");
    return {x.size(0), x.size(1), x.size(2) * x.size(3)};
  }
  TORCH_CHECK(x.dim() >= 1 && x.size(-1) == w.numel(), "raa_cpu: x must be (..., C) with C = w.numel()");
  return {x.numel() / std::max<int64_t>(1, x.size(-1)), x.size(-1), 1};
}

std::vector<at::Tensor> raa_forward(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                                    bool gelu, bool two_d) {
  const auto geo = geometry(x, w, two_d);
  const int64_t N = geo[0], C = geo[1], P = geo[2];
  at::Tensor y = at::empty_like(x);
  at::Tensor s = two_d ? at::empty({x.size(0), 1, x.size(2), x.size(3)}, x.options())
                       : at::empty([&] { auto sz = x.sizes().vec(); sz.back() = 1; return sz; }(), x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "raa_forward", [&] {
    const scalar_t bias = b.item<scalar_t>();
    auto run = [&](auto fn) {
      fn(x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), bias, y.data_ptr<scalar_t>(), s.data_ptr<scalar_t>());
    };
    if (two_d && gelu) run([&](auto... a) { forward2d<scalar_t, true>(a..., N, C, P); });
    else if (two_d) run([&](auto... a) { forward2d<scalar_t, false>(a..., N, C, P); });
    else if (gelu) run([&](auto... a) { forward1d<scalar_t, true>(a..., N, C); });
    else run([&](auto... a) { forward1d<scalar_t, false>(a..., N, C); });
  });
  return {y, s};
}

std::vector<at::Tensor> raa_backward(const at::Tensor& x, const at::Tensor& s, const at::Tensor& w,
                                     const at::Tensor& grad, bool gelu, bool two_d) {
  const auto geo = geometry(x, w, two_d);
  const int64_t N = geo[0], C = geo[1], P = geo[2];
  TORCH_CHECK(grad.is_contiguous() && grad.sizes() == x.sizes() && s.is_contiguous() &&
                  s.numel() * C == x.numel(), "raa_cpu: grad / shift shapes");
  at::Tensor gx = at::empty_like(x), gw = at::empty_like(w), gb = at::empty({1}, w.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "raa_backward", [&] {
    auto run = [&](auto fn) {
      fn(x.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
         grad.data_ptr<scalar_t>(), gx.data_ptr<scalar_t>(), gw.data_ptr<scalar_t>(),
         gb.data_ptr<scalar_t>());
    };
    if (two_d && gelu) run([&](auto... a) { backward2d<scalar_t, true>(a..., N, C, P); });
    else if (two_d) run([&](auto... a) { backward2d<scalar_t, false>(a..., N, C, P); });
    else if (gelu) run([&](auto... a) { backward1d<scalar_t, true>(a..., N, C); });
    else run([&](auto... a) { backward1d<scalar_t, false>(a..., N, C); });
  });
  return {gx, gw, gb};
}

}  // namespace

BIASBENCH_LIBRARY(BIASBENCH_NS, m) {
  m.def("forward(Tensor x, Tensor w, Tensor b, bool gelu, bool two_d) -> Tensor[]");
  m.def("backward(Tensor x, Tensor s, Tensor w, Tensor grad, bool gelu, bool two_d) -> Tensor[]");
}

BIASBENCH_LIBRARY_IMPL(BIASBENCH_NS, CPU, m) {
  m.impl("forward", &raa_forward);
  m.impl("backward", &raa_backward);
}
