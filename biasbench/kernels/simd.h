// Vectors for the CPU kernels of this package (dac_cpu.cpp, dac_linear_cpu.cpp, raa_cpu.cpp).
//
// The width is fixed at build time: BIASBENCH_VEC_BYTES = 64 (AVX-512: 16 floats / 8 doubles)
// or 32 (AVX2, and the portable fallback: 8 floats / 4 doubles). biasbench/kernels/build.py
// picks it from the CPU and passes it with the matching -m flags; a 32-byte build compiled
// with -mno-avx512f stands in for a machine without AVX-512. The vectors are GCC/Clang vector
// extensions, so every build also compiles where neither instruction set exists.
//
// BIASBENCH_NS names the TORCH_LIBRARY namespace of one build (biasbench_dac_avx512, ...), so
// builds of different widths can be loaded side by side in one process (the tests compare
// them); BIASBENCH_LIBRARY / BIASBENCH_LIBRARY_IMPL expand it before TORCH_LIBRARY pastes it.
#pragma once

#include <cstdlib>
#include <cstring>
#include <new>
#include <utility>
#if defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#ifndef BIASBENCH_VEC_BYTES
#if defined(__AVX512F__)
#define BIASBENCH_VEC_BYTES 64
#else
#define BIASBENCH_VEC_BYTES 32
#endif
#endif

#define BIASBENCH_LIBRARY_(ns, m) TORCH_LIBRARY(ns, m)
#define BIASBENCH_LIBRARY(ns, m) BIASBENCH_LIBRARY_(ns, m)
#define BIASBENCH_LIBRARY_IMPL_(ns, k, m) TORCH_LIBRARY_IMPL(ns, k, m)
#define BIASBENCH_LIBRARY_IMPL(ns, k, m) BIASBENCH_LIBRARY_IMPL_(ns, k, m)

namespace simd {

constexpr int kBytes = BIASBENCH_VEC_BYTES;

template <typename T>
struct V {
  static constexpr int L = kBytes / sizeof(T);
  typedef T type __attribute__((vector_size(kBytes)));
  static inline type load(const T* p) { type v; std::memcpy(&v, p, sizeof(v)); return v; }
  static inline void store(T* p, type v) { std::memcpy(p, &v, sizeof(v)); }
  // One broadcast (vbroadcastss from memory: a load, no shuffle). The generic form subtracts
  // +0, which folds away exactly (`type{} + x` would keep a scalar add for x = -0).
  static inline type splat(T x) {
#if defined(__AVX512F__)
    if constexpr (kBytes == 64 && sizeof(T) == 4) return (type)_mm512_set1_ps(x);
    if constexpr (kBytes == 64 && sizeof(T) == 8) return (type)_mm512_set1_pd(x);
#endif
#if defined(__AVX__)
    if constexpr (kBytes == 32 && sizeof(T) == 4) return (type)_mm256_set1_ps(x);
    if constexpr (kBytes == 32 && sizeof(T) == 8) return (type)_mm256_set1_pd(x);
#endif
    return x - type{};
  }
  static inline type relu(type v) {
#if defined(__AVX512F__)
    if constexpr (kBytes == 64 && sizeof(T) == 4) return (type)_mm512_max_ps((__m512)v, _mm512_setzero_ps());
    if constexpr (kBytes == 64 && sizeof(T) == 8) return (type)_mm512_max_pd((__m512d)v, _mm512_setzero_pd());
#endif
#if defined(__AVX__)
    if constexpr (kBytes == 32 && sizeof(T) == 4) return (type)_mm256_max_ps((__m256)v, _mm256_setzero_ps());
    if constexpr (kBytes == 32 && sizeof(T) == 8) return (type)_mm256_max_pd((__m256d)v, _mm256_setzero_pd());
#endif
    const type zero = splat(T(0));
    return v > zero ? v : zero;
  }
  // m > 0 ? v : 0
  static inline type mask(type m, type v) { const type zero = splat(T(0)); return m > zero ? v : zero; }
  static inline type max(type a, type b) { return a > b ? a : b; }  // vmaxps
  // acc + (a > b ? v : 0) and acc + (a > b ? x * y : 0): with AVX-512 one compare into a mask
  // register (shared by both when a, b are the same) and one masked add / FMA
  static inline type add_if_greater(type acc, type a, type b, type v) {
#if defined(__AVX512F__)
    if constexpr (kBytes == 64 && sizeof(T) == 4)
      return (type)_mm512_mask_add_ps((__m512)acc, _mm512_cmp_ps_mask((__m512)a, (__m512)b, _CMP_GT_OQ),
                                      (__m512)acc, (__m512)v);
    if constexpr (kBytes == 64 && sizeof(T) == 8)
      return (type)_mm512_mask_add_pd((__m512d)acc, _mm512_cmp_pd_mask((__m512d)a, (__m512d)b, _CMP_GT_OQ),
                                      (__m512d)acc, (__m512d)v);
#endif
    const type zero = splat(T(0));
    return acc + (a > b ? v : zero);
  }
  static inline type fma_if_greater(type acc, type a, type b, type x, type y) {
#if defined(__AVX512F__)
    if constexpr (kBytes == 64 && sizeof(T) == 4)
      return (type)_mm512_mask3_fmadd_ps((__m512)x, (__m512)y, (__m512)acc,
                                         _mm512_cmp_ps_mask((__m512)a, (__m512)b, _CMP_GT_OQ));
    if constexpr (kBytes == 64 && sizeof(T) == 8)
      return (type)_mm512_mask3_fmadd_pd((__m512d)x, (__m512d)y, (__m512d)acc,
                                         _mm512_cmp_pd_mask((__m512d)a, (__m512d)b, _CMP_GT_OQ));
#endif
    const type zero = splat(T(0));
    return acc + (a > b ? x * y : zero);
  }
  // Sum of the lanes as a tree (log2 L rotate-and-add steps instead of a chain of L - 1 adds:
  // a 16-lane chain cost a dense DAC forward three times its FMAs); a fixed order, so the same
  // bits on every call.
  template <int W, size_t... I>
  static inline type rotate_(type v, std::index_sequence<I...>) {
    return __builtin_shufflevector(v, v, ((I + W) % L)...);
  }
  static inline T sum(type v) {
    if constexpr (L >= 16) v += rotate_<8>(v, std::make_index_sequence<L>{});
    if constexpr (L >= 8) v += rotate_<4>(v, std::make_index_sequence<L>{});
    if constexpr (L >= 4) v += rotate_<2>(v, std::make_index_sequence<L>{});
    if constexpr (L >= 2) v += rotate_<1>(v, std::make_index_sequence<L>{});
    return v[0];
  }

  // (a0 b0 a1 b1 ...) <-> (a0 a1 ...), (b0 b1 ...): stride-2 columns to / from phase layout
  template <size_t... I>
  static inline void split_(type lo, type hi, type& even, type& odd, std::index_sequence<I...>) {
    even = __builtin_shufflevector(lo, hi, (2 * I)...);
    odd = __builtin_shufflevector(lo, hi, (2 * I + 1)...);
  }
  static inline void split(type lo, type hi, type& even, type& odd) {
    split_(lo, hi, even, odd, std::make_index_sequence<L>{});
  }
  template <size_t... I>
  static inline void merge_(type even, type odd, type& lo, type& hi, std::index_sequence<I...>) {
    lo = __builtin_shufflevector(even, odd, (I % 2 ? L + I / 2 : I / 2)...);
    hi = __builtin_shufflevector(even, odd, (I % 2 ? L + L / 2 + I / 2 : L / 2 + I / 2)...);
  }
  static inline void merge(type even, type odd, type& lo, type& hi) {
    merge_(even, odd, lo, hi, std::make_index_sequence<L>{});
  }
  // In-place transpose of the L x L matrix held in r[0..L): log2(L) rounds of interleaving
  // rows k and k + L/2 (a perfect shuffle per round), L shuffles a round, no scalar moves.
  static inline void transpose(type* r) {
    type t[L];
#pragma GCC unroll 8
    for (int round = 1; round < L; round *= 2) {
#pragma GCC unroll 16
      for (int k = 0; k < L / 2; ++k) merge(r[k], r[k + L / 2], t[2 * k], t[2 * k + 1]);
#pragma GCC unroll 16
      for (int k = 0; k < L; ++k) r[k] = t[k];
    }
  }
};

// Scratch memory that a thread keeps between calls, one growing 64-byte aligned block per slot:
// a large malloc is a fresh mmap each call, which the kernel faults in and zeroes page by page
// (measured: a tenth of a dense DAC backward at the SGEMM shapes). The memory stays with the
// thread (a few MiB at the ResNet and SGEMM shapes). `zero` clears the first n elements.
template <typename T>
struct Scratch {
  T* p;
  Scratch(int slot, int64_t n, bool zero = true) {
    struct Block {
      void* p = nullptr;
      size_t bytes = 0;
      ~Block() { std::free(p); }
    };
    static thread_local Block blocks[8];
    Block& b = blocks[slot];
    const size_t bytes = ((size_t(n > 0 ? n : 1) * sizeof(T) + 63) / 64) * 64;
    if (bytes > b.bytes) {
      std::free(b.p);
      b.p = std::aligned_alloc(64, bytes);
      b.bytes = b.p ? bytes : 0;
      if (!b.p) throw std::bad_alloc();
    }
    p = static_cast<T*>(b.p);
    if (zero) std::memset(p, 0, size_t(n > 0 ? n : 0) * sizeof(T));
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

}  // namespace simd
