// Width-1 "vector" used for the scalar ISA and for row tails on every ISA.
// Included inside each ISA namespace (never at global scope) so that no two
// translation units compiled with different flags share an inline symbol.
#pragma once
#include "half_scalar.h"

// Set to 1 by the ISA files whose VecD has 16-entry tables (has_lut16) and FMA (x86 intrinsics
// included): their row tails in double then take the same table exp and log, so a row's results
// do not depend on where its vectors begin (an out= view one element off, a split row).
#ifndef FX_DOUBLE_TABLES
#define FX_DOUBLE_TABLES 0
#endif

template <class S>
struct Vec1 {
  using scalar = S;
  static constexpr int width = 1;
  S v;

  static Vec1 load(const S* p) { return {*p}; }
  void store(S* p) const { *p = v; }
  // 16-bit storage (only with S = float): widened on load, rounded to nearest even on store.
  static Vec1 load(const Half* p) { return {S(half_to_float(*p))}; }
  static Vec1 load(const BFloat16* p) { return {S(bf16_to_float(*p))}; }
  void store(Half* p) const { *p = float_to_half(float(v)); }
  void store(BFloat16* p) const { *p = float_to_bf16(float(v)); }
  void stream(S* p) const { *p = v; }
  static void store_fence() {}
  static Vec1 set1(S s) { return {s}; }

  friend Vec1 operator+(Vec1 a, Vec1 b) { return {a.v + b.v}; }
  friend Vec1 operator-(Vec1 a, Vec1 b) { return {a.v - b.v}; }
  friend Vec1 operator*(Vec1 a, Vec1 b) { return {a.v * b.v}; }
  friend Vec1 operator/(Vec1 a, Vec1 b) { return {a.v / b.v}; }
  // a*b + c; with the double tables one rounding, as the vector lanes have (the table log's
  // r = m R - 1 needs it), whatever the compiler's contraction of a*b + c.
  friend Vec1 fmadd(Vec1 a, Vec1 b, Vec1 c) {
#if FX_DOUBLE_TABLES
    if constexpr (sizeof(S) == 8) {
      return {_mm_cvtsd_f64(_mm_fmadd_sd(_mm_set_sd(a.v), _mm_set_sd(b.v), _mm_set_sd(c.v)))};
    }
#endif
    return {a.v * b.v + c.v};
  }
  // Same NaN rule as x86 maxps/minps: a NaN in b is returned.
  friend Vec1 vmax(Vec1 a, Vec1 b) { return {a.v > b.v ? a.v : b.v}; }
  friend Vec1 vmin(Vec1 a, Vec1 b) { return {a.v < b.v ? a.v : b.v}; }
  // res where x >= lo (or x is NaN), else 0.
  friend Vec1 zero_below(Vec1 x, Vec1 lo, Vec1 res) { return {x.v < lo.v ? S(0) : res.v}; }
  // A mask and lane selection as the vector types have them (vexp's overflow to inf).
  using mask = bool;
  friend bool vlt(Vec1 a, Vec1 b) { return a.v < b.v; }
  friend Vec1 vselect(bool m, Vec1 if_true, Vec1 if_false) { return m ? if_true : if_false; }
  S hsum() const { return v; }
  S hmax() const { return v; }
  bool any_nan() const { return v != v; }

  // x = mant * 2^expo with mant in [1, 2), for positive normal x.
  static void split_exponent(Vec1 x, Vec1& mant, Vec1& expo) {
    if constexpr (sizeof(S) == 4) {
      int32_t bits;
      FX_MEMCPY(&bits, &x.v, 4);
      expo.v = S((bits >> 23) - 127);
      bits = (bits & 0x007FFFFF) | 0x3F800000;
      FX_MEMCPY(&mant.v, &bits, 4);
    } else {
      int64_t bits;
      FX_MEMCPY(&bits, &x.v, 8);
      expo.v = S((bits >> 52) - 1023);
      bits = (bits & 0x000FFFFFFFFFFFFFLL) | 0x3FF0000000000000LL;
      FX_MEMCPY(&mant.v, &bits, 8);
    }
  }

  // 2^(k/8) from t = k + 8 * 127 + 1.5 * 2^23, float only (see vexp.h).
  static constexpr bool has_lut8 = sizeof(S) == 4;
  static Vec1 exp2_eighths(Vec1 t, const uint32_t* table) {
    uint32_t bits;
    FX_MEMCPY(&bits, &t.v, 4);
    bits = table[bits & 7] + (bits << 20);  // (wraps mod 2^32, as the table expects)
    float r;
    FX_MEMCPY(&r, &bits, 4);
    return {r};
  }

  // Double only, where FX_DOUBLE_TABLES (see the top): as VecD's in vec_avx512.h.
  static constexpr bool has_lut16 = sizeof(S) == 8 && FX_DOUBLE_TABLES;
  static Vec1 exp2_sixteenths(Vec1 t, const uint64_t* table) {
    uint64_t bits;
    FX_MEMCPY(&bits, &t.v, 8);
    bits = table[bits & 15] + (bits << 48);  // (wraps mod 2^64, as the table expects)
    S r;
    FX_MEMCPY(&r, &bits, 8);
    return {r};
  }
  static Vec1 lookup16(Vec1 t, const S* table) {
    uint64_t bits;
    FX_MEMCPY(&bits, &t.v, 8);
    return {table[bits & 15]};
  }
  // As getmant / getexp with mant in [0.75, 1.5), for positive normal x, inf or NaN.
  static void split_exponent_centred(Vec1 x, Vec1& mant, Vec1& expo) {
    split_exponent(x, mant, expo);
    if (!(x.v - x.v == S(0))) {
      mant.v = x.v == x.v ? S(1) : x.v;  // inf: mantissa 1, exponent inf; NaN stays NaN
      expo.v = x.v;
    } else if (mant.v >= S(1.5)) {
      mant.v *= S(0.5);
      expo.v += S(1);
    }
  }

  // 2^n where t = n + bias + 1.5 * 2^mantissa_bits: the low bits of t hold the biased exponent,
  // and shifting them to the exponent field drops the rest.
  static Vec1 pow2_from_biased(Vec1 t) {
    if constexpr (sizeof(S) == 4) {
      uint32_t bits;
      FX_MEMCPY(&bits, &t.v, 4);
      bits <<= 23;
      S r;
      FX_MEMCPY(&r, &bits, 4);
      return {r};
    } else {
      uint64_t bits;
      FX_MEMCPY(&bits, &t.v, 8);
      bits <<= 52;
      S r;
      FX_MEMCPY(&r, &bits, 8);
      return {r};
    }
  }
};

// Elementwise kernels (bce_body.h): a where x < lo, else b (NaN x: b); and res, or 0 where c is
// 0 (so a zero coefficient times inf is 0).
template <class S>
inline Vec1<S> select_below(Vec1<S> x, Vec1<S> lo, Vec1<S> a, Vec1<S> b) {
  return {x.v < lo.v ? a.v : b.v};
}
template <class S>
inline Vec1<S> zero_where_zero(Vec1<S> c, Vec1<S> res) {
  return {c.v == S(0) ? S(0) : res.v};
}
