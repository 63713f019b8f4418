// AVX-512 (F + DQ) vectors: 16 floats, 8 doubles. Included inside the avx512 ISA namespace.
#pragma once
#include <immintrin.h>

#include "permute_columns.h"

// The 128-bit lanes (4 of a 512-bit vector) moved by an immediate: a's lanes i0, i1, then b's
// lanes i2, i3 (a macro's immediate in GCC at -O0 and clang: a template parameter).
template <int kImm>
FX_ALWAYS_INLINE __m512 shuffle_lanes(__m512 a, __m512 b) { return _mm512_shuffle_f32x4(a, b, kImm); }
template <int kImm>
FX_ALWAYS_INLINE __m512d shuffle_lanes(__m512d a, __m512d b) { return _mm512_shuffle_f64x2(a, b, kImm); }

// A 4 x 4 transpose of 128-bit lanes: out_L = (a0 lane L, a1 lane L, a2 lane L, a3 lane L).
template <class R>
FX_ALWAYS_INLINE void transpose_lanes(R a0, R a1, R a2, R a3, R& out0, R& out1, R& out2, R& out3) {
  const R d0 = shuffle_lanes<_MM_SHUFFLE(1, 0, 1, 0)>(a0, a1), d1 = shuffle_lanes<_MM_SHUFFLE(3, 2, 3, 2)>(a0, a1);
  const R d2 = shuffle_lanes<_MM_SHUFFLE(1, 0, 1, 0)>(a2, a3), d3 = shuffle_lanes<_MM_SHUFFLE(3, 2, 3, 2)>(a2, a3);
  out0 = shuffle_lanes<_MM_SHUFFLE(2, 0, 2, 0)>(d0, d2);
  out1 = shuffle_lanes<_MM_SHUFFLE(3, 1, 3, 1)>(d0, d2);
  out2 = shuffle_lanes<_MM_SHUFFLE(2, 0, 2, 0)>(d1, d3);
  out3 = shuffle_lanes<_MM_SHUFFLE(3, 1, 3, 1)>(d1, d3);
}

// Lane permutes of floats and doubles under one name (permute_columns.h's moves): from two
// sources by a (log2 W + 1)-bit index, and a masked one from a single source.
FX_ALWAYS_INLINE __m512 permute_two(__m512 a, __m512i index, __m512 b) { return _mm512_permutex2var_ps(a, index, b); }
FX_ALWAYS_INLINE __m512d permute_two(__m512d a, __m512i index, __m512d b) { return _mm512_permutex2var_pd(a, index, b); }
FX_ALWAYS_INLINE __m512 permute_into(__m512 dst, __mmask16 m, __m512i index, __m512 a) {
  return _mm512_mask_permutexvar_ps(dst, m, index, a);
}
FX_ALWAYS_INLINE __m512d permute_into(__m512d dst, __mmask8 m, __m512i index, __m512d a) {
  return _mm512_mask_permutexvar_pd(dst, m, index, a);
}

// W contiguous rows of C classes to column order (cols[j] lane l = p[l * C + j]) and back, by
// the permutes of table t (a PermuteColumns<C, W>): C loads or stores and C (C - 1) permutes.
template <int C, class Vec, class Table>
FX_ALWAYS_INLINE void permute_to_columns(const typename Vec::scalar* p, const Table& t, Vec* cols) {
  constexpr int W = Vec::width;
  decltype(Vec::v) rows[C];
  for (int s = 0; s < C; ++s) rows[s] = Vec::load(p + W * s).v;
  for (int j = 0; j < C; ++j) {
    const __m512i index = _mm512_loadu_si512(t.column_index[j]);
    auto col = C == 1 ? rows[0] : permute_two(rows[0], index, rows[C > 1 ? 1 : 0]);
    for (int s = 2; s < C; ++s) col = permute_into(col, t.column_mask[j][s], index, rows[s]);
    cols[j].v = col;
  }
}
template <int C, class Vec, class Table>
FX_ALWAYS_INLINE void permute_to_rows(const Vec* cols, const Table& t, typename Vec::scalar* p) {
  constexpr int W = Vec::width;
  for (int v = 0; v < C; ++v) {
    const __m512i index = _mm512_loadu_si512(t.row_index[v]);
    Vec out{C == 1 ? cols[0].v : permute_two(cols[0].v, index, cols[C > 1 ? 1 : 0].v)};
    for (int j = 2; j < C; ++j) out.v = permute_into(out.v, t.row_mask[v][j], index, cols[j].v);
    out.store(p + W * v);
  }
}

struct VecF {
  using scalar = float;
  static constexpr int width = 16;
  __m512 v;

  static VecF load(const float* p) { return {_mm512_loadu_ps(p)}; }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void stream(float* p) const { _mm512_stream_ps(p, v); }  // p aligned to 64 bytes
  static void store_fence() { _mm_sfence(); }
  static VecF set1(float s) { return {_mm512_set1_ps(s)}; }
  // 16-bit storage: float16 with AVX512F's conversions, bfloat16 as the high half of a float's
  // bits. Stores round to nearest even; NaN stays NaN, inf stays inf.
  static VecF load(const Half* p) {
    return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
  }
  void store(Half* p) const {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  static VecF load(const BFloat16* p) {
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(wide, 16))};
  }
  void store(BFloat16* p) const {
    const __m512i b = _mm512_castps_si512(v);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7FFF)), odd), 16);
    // NaN: truncate and set the quiet bit (rounding could carry a NaN's payload into inf).
    const __m512i quiet = _mm512_or_si512(_mm512_srli_epi32(b, 16), _mm512_set1_epi32(0x40));
    const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(_mm512_mask_blend_epi32(nan, r, quiet)));
  }

  friend VecF operator+(VecF a, VecF b) { return {_mm512_add_ps(a.v, b.v)}; }
  friend VecF operator-(VecF a, VecF b) { return {_mm512_sub_ps(a.v, b.v)}; }
  friend VecF operator*(VecF a, VecF b) { return {_mm512_mul_ps(a.v, b.v)}; }
  friend VecF operator/(VecF a, VecF b) { return {_mm512_div_ps(a.v, b.v)}; }
  friend VecF fmadd(VecF a, VecF b, VecF c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  friend VecF vmax(VecF a, VecF b) { return {_mm512_max_ps(a.v, b.v)}; }
  friend VecF vmin(VecF a, VecF b) { return {_mm512_min_ps(a.v, b.v)}; }
  friend VecF zero_below(VecF x, VecF lo, VecF res) {
    return {_mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x.v, lo.v, _CMP_NLT_UQ), res.v)};
  }
  float hsum() const { return _mm512_reduce_add_ps(v); }
  float hmax() const { return _mm512_reduce_max_ps(v); }
  bool any_nan() const { return _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) != 0; }
  // Masks and lane selection, for rows held one per lane (see vec_avx2.h).
  using mask = __mmask16;
  friend mask veq(VecF a, VecF b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_EQ_OQ); }
  friend mask vne(VecF a, VecF b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_NEQ_OQ); }
  friend mask vlt(VecF a, VecF b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ); }
  friend VecF vselect(mask m, VecF if_true, VecF if_false) {
    return {_mm512_mask_blend_ps(m, if_false.v, if_true.v)};
  }
  static VecF add_where(mask m, VecF acc, VecF x) { return {_mm512_mask_add_ps(acc.v, m, acc.v, x.v)}; }
  static VecF pick_unless(mask m, VecF x, VecF acc) { return {_mm512_mask_blend_ps(m, x.v, acc.v)}; }
  static VecF load_first(const float* p, int n) {
    return {_mm512_maskz_loadu_ps(__mmask16((1u << n) - 1), p)};
  }
  void store_first(float* p, int n) const { _mm512_mask_storeu_ps(p, __mmask16((1u << n) - 1), v); }
  // 16 x 16 transpose: r[i] lane j <-> r[j] lane i. Pairs of rows interleaved (as floats,
  // then as doubles) within 128-bit lanes, then the 128-bit lanes moved twice: 64 shuffles.
  FX_ALWAYS_INLINE static void transpose(VecF* r) {
    __m512 a[16], b[16];
    for (int k = 0; k < 8; ++k) {
      a[2 * k] = _mm512_unpacklo_ps(r[2 * k].v, r[2 * k + 1].v);
      a[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k].v, r[2 * k + 1].v);
    }
    // b[4m + c], 128-bit lane L: rows 4m .. 4m + 3 at class 4L + c.
    for (int m = 0; m < 4; ++m) {
      const __m512d lo = _mm512_castps_pd(a[4 * m]), hi = _mm512_castps_pd(a[4 * m + 1]);
      const __m512d lo2 = _mm512_castps_pd(a[4 * m + 2]), hi2 = _mm512_castps_pd(a[4 * m + 3]);
      b[4 * m] = _mm512_castpd_ps(_mm512_unpacklo_pd(lo, lo2));
      b[4 * m + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(lo, lo2));
      b[4 * m + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(hi, hi2));
      b[4 * m + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(hi, hi2));
    }
    // Class 4L + c takes lane L of b[c], b[4 + c], b[8 + c], b[12 + c].
    for (int c = 0; c < 4; ++c) {
      transpose_lanes(b[c], b[4 + c], b[8 + c], b[12 + c], r[c].v, r[4 + c].v, r[8 + c].v, r[12 + c].v);
    }
  }
  // 16 contiguous rows of C <= 8 classes to and from column order: cols[j] lane l is
  // p[l * C + j]. C loads or stores and C (C - 1) permutes (permute_columns.h).
  static constexpr bool has_columns(int C) { return C >= 1 && C <= 8; }
  template <int C>
  FX_ALWAYS_INLINE static void load_columns(const float* p, VecF* cols) {
    permute_to_columns<C>(p, kPermuteColumns<C>, cols);
  }
  template <int C>
  FX_ALWAYS_INLINE static void store_columns(const VecF* cols, float* p) {
    permute_to_rows<C>(cols, kPermuteColumns<C>, p);
  }
  static void split_exponent(VecF x, VecF& mant, VecF& expo) {
    expo.v = _mm512_getexp_ps(x.v);
    mant.v = _mm512_getmant_ps(x.v, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
  }
  // 2^n from t = n + 127 + 1.5 * 2^23 (see vexp.h).
  static VecF pow2_from_biased(VecF t) { return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(t.v), 23))}; }
  // table[i] for m in [1, 2) with top 5 mantissa bits i (vlog.h): the permute reads the index's
  // low 5 bits, so the exponent above them needs no mask.
  static constexpr bool has_lut32 = true;
  // label_count.h's count: the labels that are not ignore_index counted, and the largest of
  // them as unsigned (negatives wrap high) kept, by masked ops: three per 8 labels, where the
  // compiler's vectorisation of the generic loop took seven; and each line asked for 2 KiB
  // ahead (32768 labels in L2, one thread: 4.4 -> 3.0 us, with the prefetch 2.3).
  static constexpr int64_t kLabelsAhead = 256;
  static int64_t count_kept_labels(const int64_t* labels, int64_t n, int64_t classes, int64_t ignore_index) {
    const __m512i ignore = _mm512_set1_epi64(ignore_index), minus_one = _mm512_set1_epi64(-1);
    __m512i largest[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()}, kept[2] = {largest[0], largest[1]};
    const auto take = [&](int k, __m512i v, __mmask8 keep) {
      largest[k] = _mm512_mask_max_epu64(largest[k], keep, largest[k], v);
      kept[k] = _mm512_mask_sub_epi64(kept[k], keep, kept[k], minus_one);
    };
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
      for (int k = 0; k < 2; ++k) {
        if (i + kLabelsAhead < n) FX_PREFETCH(labels + i + 8 * k + kLabelsAhead);
        const __m512i v = _mm512_loadu_si512(labels + i + 8 * k);
        take(k, v, _mm512_cmpneq_epi64_mask(v, ignore));
      }
    }
    for (; i < n; i += 8) {  // (masked-off lanes are not read)
      const __mmask8 inside = __mmask8(n - i >= 8 ? 0xFF : (1u << (n - i)) - 1);
      const __m512i v = _mm512_maskz_loadu_epi64(inside, labels + i);
      take(0, v, _mm512_mask_cmpneq_epi64_mask(inside, v, ignore));
    }
    alignas(64) uint64_t top[8];
    alignas(64) int64_t count[8];
    _mm512_store_si512(top, _mm512_max_epu64(largest[0], largest[1]));
    _mm512_store_si512(count, _mm512_add_epi64(kept[0], kept[1]));
    uint64_t most = 0;
    int64_t total = 0;
    for (int k = 0; k < 8; ++k) {
      most = top[k] > most ? top[k] : most;
      total += count[k];
    }
    return total == 0 || most < uint64_t(classes) ? total : -1;
  }
  // 16 validated int64 labels (class indices, below 2^24, or ignore_index) as floats: their low
  // halves gathered by one permute and converted. The compiler's loop went through int32 and
  // float arrays on the stack. Right as they are where ignore_index is a negative int32 (an
  // ignored label's low half is that negative number, below every class).
  static constexpr bool has_label_load = true;
  static VecF load_labels_low(const int64_t* labels) {
    const __m512i lo = _mm512_loadu_si512(labels), hi = _mm512_loadu_si512(labels + 8);
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return {_mm512_cvtepi32_ps(_mm512_permutex2var_epi32(lo, even, hi))};
  }
  // For any ignore_index: -1 where ignored, the ignored lanes found by whole 64-bit compares.
  static VecF load_labels(const int64_t* labels, int64_t ignore_index) {
    const __m512i lo = _mm512_loadu_si512(labels), hi = _mm512_loadu_si512(labels + 8);
    const __m512i ignore = _mm512_set1_epi64(ignore_index);
    const __mmask16 ignored =
        _mm512_kunpackb(_mm512_cmpeq_epi64_mask(hi, ignore), _mm512_cmpeq_epi64_mask(lo, ignore));
    return {_mm512_mask_blend_ps(ignored, load_labels_low(labels).v, _mm512_set1_ps(-1.0f))};
  }
  static VecF lookup32_by_mantissa(VecF m, const float* table) {
    const __m512i index = _mm512_srli_epi32(_mm512_castps_si512(m.v), 18);
    return {_mm512_permutex2var_ps(_mm512_loadu_ps(table), index, _mm512_loadu_ps(table + 16))};
  }
  // 2^(k/8) from t = k + 8 * 127 + 1.5 * 2^23 (see vexp.h and the AVX2 version): the permute
  // reads the low 4 bits, so the table is repeated.
  static constexpr bool has_lut8 = true;
  static VecF exp2_eighths(VecF t, const uint32_t* table) {
    const __m512i bits = _mm512_castps_si512(t.v);
    const __m512i entries = _mm512_setr_epi32(int(table[0]), int(table[1]), int(table[2]), int(table[3]),
                                              int(table[4]), int(table[5]), int(table[6]), int(table[7]),
                                              int(table[0]), int(table[1]), int(table[2]), int(table[3]),
                                              int(table[4]), int(table[5]), int(table[6]), int(table[7]));
    const __m512i frac = _mm512_permutexvar_epi32(bits, entries);
    return {_mm512_castsi512_ps(_mm512_add_epi32(frac, _mm512_slli_epi32(bits, 20)))};
  }
};

struct VecD {
  using scalar = double;
  static constexpr int width = 8;
  __m512d v;

  static VecD load(const double* p) { return {_mm512_loadu_pd(p)}; }
  void store(double* p) const { _mm512_storeu_pd(p, v); }
  void stream(double* p) const { _mm512_stream_pd(p, v); }
  static void store_fence() { _mm_sfence(); }
  static VecD set1(double s) { return {_mm512_set1_pd(s)}; }

  friend VecD operator+(VecD a, VecD b) { return {_mm512_add_pd(a.v, b.v)}; }
  friend VecD operator-(VecD a, VecD b) { return {_mm512_sub_pd(a.v, b.v)}; }
  friend VecD operator*(VecD a, VecD b) { return {_mm512_mul_pd(a.v, b.v)}; }
  friend VecD operator/(VecD a, VecD b) { return {_mm512_div_pd(a.v, b.v)}; }
  friend VecD fmadd(VecD a, VecD b, VecD c) { return {_mm512_fmadd_pd(a.v, b.v, c.v)}; }
  friend VecD vmax(VecD a, VecD b) { return {_mm512_max_pd(a.v, b.v)}; }
  friend VecD vmin(VecD a, VecD b) { return {_mm512_min_pd(a.v, b.v)}; }
  friend VecD zero_below(VecD x, VecD lo, VecD res) {
    return {_mm512_maskz_mov_pd(_mm512_cmp_pd_mask(x.v, lo.v, _CMP_NLT_UQ), res.v)};
  }
  double hsum() const { return _mm512_reduce_add_pd(v); }
  double hmax() const { return _mm512_reduce_max_pd(v); }
  bool any_nan() const { return _mm512_cmp_pd_mask(v, v, _CMP_UNORD_Q) != 0; }
  using mask = __mmask8;
  friend mask veq(VecD a, VecD b) { return _mm512_cmp_pd_mask(a.v, b.v, _CMP_EQ_OQ); }
  friend mask vne(VecD a, VecD b) { return _mm512_cmp_pd_mask(a.v, b.v, _CMP_NEQ_OQ); }
  friend mask vlt(VecD a, VecD b) { return _mm512_cmp_pd_mask(a.v, b.v, _CMP_LT_OQ); }
  friend VecD vselect(mask m, VecD if_true, VecD if_false) {
    return {_mm512_mask_blend_pd(m, if_false.v, if_true.v)};
  }
  static VecD add_where(mask m, VecD acc, VecD x) { return {_mm512_mask_add_pd(acc.v, m, acc.v, x.v)}; }
  static VecD pick_unless(mask m, VecD x, VecD acc) { return {_mm512_mask_blend_pd(m, x.v, acc.v)}; }
  static VecD load_first(const double* p, int n) {
    return {_mm512_maskz_loadu_pd(__mmask8((1u << n) - 1), p)};
  }
  void store_first(double* p, int n) const { _mm512_mask_storeu_pd(p, __mmask8((1u << n) - 1), v); }
  // 8 x 8 transpose: r[i] lane j <-> r[j] lane i. Pairs of rows interleaved within 128-bit
  // lanes, then the 128-bit lanes moved twice: 24 shuffles.
  FX_ALWAYS_INLINE static void transpose(VecD* r) {
    __m512d a[8];
    for (int k = 0; k < 4; ++k) {  // a[2k + c], 128-bit lane L: rows 2k, 2k + 1 at class 2L + c
      a[2 * k] = _mm512_unpacklo_pd(r[2 * k].v, r[2 * k + 1].v);
      a[2 * k + 1] = _mm512_unpackhi_pd(r[2 * k].v, r[2 * k + 1].v);
    }
    // Class 2L + c takes lane L of a[c], a[2 + c], a[4 + c], a[6 + c].
    for (int c = 0; c < 2; ++c) {
      transpose_lanes(a[c], a[2 + c], a[4 + c], a[6 + c], r[c].v, r[2 + c].v, r[4 + c].v, r[6 + c].v);
    }
  }
  // 8 contiguous rows of C classes to and from column order, as VecF's (permute_columns.h):
  // C (C - 1) permutes and C loads or stores each way, where the transposes take 8 loads, 8
  // stores and 15-24 shuffles. Up to 5 classes (C++ kernels alone, one thread, 65536 x 3 fused
  // 230 -> 200 us, x 5 390 -> 378; x 6 no better, see the README).
  static constexpr bool has_columns(int C) { return C >= 1 && C <= 5; }
  template <int C>
  FX_ALWAYS_INLINE static void load_columns(const double* p, VecD* cols) {
    permute_to_columns<C>(p, kPermuteColumnsD<C>, cols);
  }
  template <int C>
  FX_ALWAYS_INLINE static void store_columns(const VecD* cols, double* p) {
    permute_to_rows<C>(cols, kPermuteColumnsD<C>, p);
  }
  static void split_exponent(VecD x, VecD& mant, VecD& expo) {
    expo.v = _mm512_getexp_pd(x.v);
    mant.v = _mm512_getmant_pd(x.v, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);
  }
  // 16-entry tables of doubles held in two registers (vexp.h, vlog.h): a permute reads the low 4
  // bits of each lane's index.
  static constexpr bool has_lut16 = true;
  // 2^(k/16) from t = k + 16 * 1023 + 1.5 * 2^52.
  static VecD exp2_sixteenths(VecD t, const uint64_t* table) {
    const __m512i bits = _mm512_castpd_si512(t.v);
    const __m512i frac = _mm512_permutex2var_epi64(_mm512_loadu_si512(table), bits, _mm512_loadu_si512(table + 8));
    return {_mm512_castsi512_pd(_mm512_add_epi64(frac, _mm512_slli_epi64(bits, 48)))};
  }
  // table[k mod 16] from t = k + 1.5 * 2^52.
  static VecD lookup16(VecD t, const double* table) {
    return {_mm512_permutex2var_pd(_mm512_loadu_pd(table), _mm512_castpd_si512(t.v), _mm512_loadu_pd(table + 8))};
  }
  // x = mant 2^expo with mant in [0.75, 1.5): getmant halves a [1, 2) mantissa of 1.5 or more,
  // and the exponent goes up by one there.
  static void split_exponent_centred(VecD x, VecD& mant, VecD& expo) {
    mant.v = _mm512_getmant_pd(x.v, _MM_MANT_NORM_p75_1p5, _MM_MANT_SIGN_src);
    const __m512d e = _mm512_getexp_pd(x.v);
    expo.v = _mm512_mask_add_pd(e, _mm512_cmp_pd_mask(mant.v, _mm512_set1_pd(1.0), _CMP_LT_OQ), e, _mm512_set1_pd(1.0));
  }
  // 2^n from t = n + 1023 + 1.5 * 2^52 (see vexp.h).
  static VecD pow2_from_biased(VecD t) { return {_mm512_castsi512_pd(_mm512_slli_epi64(_mm512_castpd_si512(t.v), 52))}; }
};

// Doubles are as wide as they get (BlockLanes of float64 rows).
FX_ALWAYS_INLINE void widen(VecD x, VecD* wide) { wide[0] = x; }

// The floats of x as doubles: lanes 0-7 in wide[0], 8-15 in wide[1].
FX_ALWAYS_INLINE void widen(VecF x, VecD* wide) {
  wide[0].v = _mm512_cvtps_pd(_mm512_castps512_ps256(x.v));
  wide[1].v = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x.v), 1)));
}

// Elementwise kernels (bce_body.h): a where x < lo, else b (NaN x: b); and res, or 0 where c is
// 0 (so a zero coefficient times inf is 0).
inline VecF select_below(VecF x, VecF lo, VecF a, VecF b) {
  return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(x.v, lo.v, _CMP_LT_OQ), b.v, a.v)};
}
inline VecF zero_where_zero(VecF c, VecF res) {
  return {_mm512_maskz_mov_ps(_mm512_cmp_ps_mask(c.v, _mm512_setzero_ps(), _CMP_NEQ_UQ), res.v)};
}
inline VecD select_below(VecD x, VecD lo, VecD a, VecD b) {
  return {_mm512_mask_blend_pd(_mm512_cmp_pd_mask(x.v, lo.v, _CMP_LT_OQ), b.v, a.v)};
}
inline VecD zero_where_zero(VecD c, VecD res) {
  return {_mm512_maskz_mov_pd(_mm512_cmp_pd_mask(c.v, _mm512_setzero_pd(), _CMP_NEQ_UQ), res.v)};
}
