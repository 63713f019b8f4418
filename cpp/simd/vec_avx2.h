// AVX2 + FMA (+ F16C) vectors: 8 floats, 4 doubles. Included inside the avx2 ISA namespace.
#pragma once
#include <immintrin.h>

#include "odd_columns.h"

// vblendvps / vblendvpd as written. GCC rewrites the blendv intrinsics as "mask < 0 ? t : f",
// and a compare mask used by two blends then gets re-made with an extra vpcmpgtd per use
// (3% of the small-class kernel's instructions). Other compilers keep the intrinsic.
#if defined(__GNUC__) && !defined(__clang__)
FX_ALWAYS_INLINE __m256 blend_lanes(__m256 if_false, __m256 if_true, __m256 mask) {
  __m256 r;
  __asm__("vblendvps %3, %2, %1, %0" : "=x"(r) : "x"(if_false), "x"(if_true), "x"(mask));
  return r;
}
FX_ALWAYS_INLINE __m256d blend_lanes(__m256d if_false, __m256d if_true, __m256d mask) {
  __m256d r;
  __asm__("vblendvpd %3, %2, %1, %0" : "=x"(r) : "x"(if_false), "x"(if_true), "x"(mask));
  return r;
}
#else
FX_ALWAYS_INLINE __m256 blend_lanes(__m256 if_false, __m256 if_true, __m256 mask) {
  return _mm256_blendv_ps(if_false, if_true, mask);
}
FX_ALWAYS_INLINE __m256d blend_lanes(__m256d if_false, __m256d if_true, __m256d mask) {
  return _mm256_blendv_pd(if_false, if_true, mask);
}
#endif

struct VecF {
  using scalar = float;
  static constexpr int width = 8;
  __m256 v;

  static VecF load(const float* p) { return {_mm256_loadu_ps(p)}; }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  void stream(float* p) const { _mm256_stream_ps(p, v); }  // p aligned to 32 bytes
  // Orders streamed stores before the stores that follow (e.g. the pool's "done").
  static void store_fence() { _mm_sfence(); }
  static VecF set1(float s) { return {_mm256_set1_ps(s)}; }
  // 16-bit storage: float16 through F16C (every AVX2 CPU has it), bfloat16 as the high half of
  // a float's bits. Stores round to nearest even; NaN stays NaN, inf stays inf.
  static VecF load(const Half* p) {
    return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
  }
  void store(Half* p) const {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  static VecF load(const BFloat16* p) {
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))};
  }
  void store(BFloat16* p) const {
    const __m256i b = _mm256_castps_si256(v);
    const __m256i hi = _mm256_srli_epi32(b, 16);
    const __m256i bias = _mm256_add_epi32(_mm256_and_si256(hi, _mm256_set1_epi32(1)), _mm256_set1_epi32(0x7FFF));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(b, bias), 16);  // to nearest, ties to even
    // NaN: truncate and set the quiet bit (rounding could carry a NaN's payload into inf).
    const __m256i quiet = _mm256_or_si256(hi, _mm256_set1_epi32(0x40));
    r = _mm256_blendv_epi8(r, quiet, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    // 8 x 32-bit values below 2^16 -> 8 x 16-bit (packus saturates nothing here).
    const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
  }

  friend VecF operator+(VecF a, VecF b) { return {_mm256_add_ps(a.v, b.v)}; }
  friend VecF operator-(VecF a, VecF b) { return {_mm256_sub_ps(a.v, b.v)}; }
  friend VecF operator*(VecF a, VecF b) { return {_mm256_mul_ps(a.v, b.v)}; }
  friend VecF operator/(VecF a, VecF b) { return {_mm256_div_ps(a.v, b.v)}; }
  friend VecF fmadd(VecF a, VecF b, VecF c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  friend VecF vmax(VecF a, VecF b) { return {_mm256_max_ps(a.v, b.v)}; }
  friend VecF vmin(VecF a, VecF b) { return {_mm256_min_ps(a.v, b.v)}; }
  friend VecF zero_below(VecF x, VecF lo, VecF res) {
    return {_mm256_andnot_ps(_mm256_cmp_ps(x.v, lo.v, _CMP_LT_OQ), res.v)};
  }
  float hsum() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  float hmax() const {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  bool any_nan() const { return _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0; }
  // Masks (all bits set per lane where true) and lane selection, for rows held one per lane.
  using mask = __m256;
  friend mask veq(VecF a, VecF b) { return _mm256_cmp_ps(a.v, b.v, _CMP_EQ_OQ); }
  friend mask vne(VecF a, VecF b) { return _mm256_cmp_ps(a.v, b.v, _CMP_NEQ_OQ); }
  friend mask vlt(VecF a, VecF b) { return _mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ); }
  friend VecF vselect(mask m, VecF if_true, VecF if_false) {
    return {blend_lanes(if_false.v, if_true.v, m)};
  }
  // Selects that need no blend (vblendvps is 2 uops on Skylake, 3 on Golden Cove; and / or /
  // andnot are 1): acc + x where m is set, for acc that is not -0.0 (acc + 0.0 elsewhere);
  // x where m is set and 0 elsewhere; x where m is clear and acc where it is set, for acc that
  // is +0.0 where m is clear (a label's value picked out of its row's classes).
  static VecF add_where(mask m, VecF acc, VecF x) { return {_mm256_add_ps(acc.v, _mm256_and_ps(m, x.v))}; }
  static VecF zero_unless(mask m, VecF x) { return {_mm256_and_ps(m, x.v)}; }
  static VecF pick_unless(mask m, VecF x, VecF acc) { return {_mm256_or_ps(acc.v, _mm256_andnot_ps(m, x.v))}; }
  // The first n lanes (0 < n <= 8) from / to memory; the others are 0 on load and untouched on
  // store, and their memory is never accessed (so a short last row cannot fault). The store is
  // pieces of 4, 2 and 1 lanes: a masked store is microcoded on AMD, and a store to a buffer
  // read back a lane at a time stalls the loads.
  static __m256i first_lanes(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static VecF load_first(const float* p, int n) { return {_mm256_maskload_ps(p, first_lanes(n))}; }
  void store_first(float* p, int n) const {
    if (n == 8) return store(p);
    __m128 part = _mm256_castps256_ps128(v);
    if (n >= 4) {
      _mm_storeu_ps(p, part);
      part = _mm256_extractf128_ps(v, 1);
      p += 4;
      n -= 4;
    }
    if (n >= 2) {
      _mm_storel_pi(reinterpret_cast<__m64*>(p), part);
      part = _mm_movehl_ps(part, part);
      p += 2;
      n -= 2;
    }
    if (n == 1) _mm_store_ss(p, part);
  }
  // 8 contiguous rows of C classes (C odd, below 8) to and from column order: cols[j] lane l
  // is p[l * C + j]. C loads or stores, C permutes and C (C - 1) blends (odd_columns.h).
  static constexpr bool has_columns(int C) { return C % 2 == 1 && C < 8; }
  template <int C>
  FX_ALWAYS_INLINE static void load_columns(const float* p, VecF* cols) {
    __m256 rows[C];
    for (int s = 0; s < C; ++s) rows[s] = _mm256_loadu_ps(p + 8 * s);
    columns_from_rows<C>(rows, cols, std::make_integer_sequence<int, C>{});
  }
  template <int C>
  FX_ALWAYS_INLINE static void store_columns(const VecF* cols, float* p) {
    constexpr const OddColumns<C, 8>& t = kOddColumns<C, 8>;
    __m256 moved[C];
    for (int j = 0; j < C; ++j) moved[j] = _mm256_permutevar8x32_ps(cols[j].v, _mm256_castps_si256(lanes(t.scatter[j])));
    rows_from_columns<C>(moved, p, std::make_integer_sequence<int, C>{});
  }
  // The blends take their lane masks as immediates (no mask register to load): the loops over
  // columns and vectors are unrolled at compile time. (The mask goes through a template
  // parameter: clang's and unoptimised GCC's _mm256_blend_ps are macros, which would split at
  // a template's comma, and need a plain constant.)
  template <int kMask>
  FX_ALWAYS_INLINE static __m256 blend_immediate(__m256 if_clear, __m256 if_set) {
    return _mm256_blend_ps(if_clear, if_set, kMask);
  }
  template <int C, int... J>
  FX_ALWAYS_INLINE static void columns_from_rows(const __m256* rows, VecF* cols, std::integer_sequence<int, J...>) {
    ((cols[J].v = _mm256_permutevar8x32_ps(blend_rows<C, J>(rows, std::make_integer_sequence<int, C - 1>{}),
                                           _mm256_castps_si256(lanes(kOddColumns<C, 8>.gather[J])))), ...);
  }
  template <int C, int J, int... S>
  FX_ALWAYS_INLINE static __m256 blend_rows(const __m256* rows, std::integer_sequence<int, S...>) {
    __m256 b = rows[0];  // column J's lanes from row-order vector s, s = 1, ..., C - 1
    ((b = blend_immediate<kOddColumns<C, 8>.in_bits[J][S + 1]>(b, rows[S + 1])), ...);
    return b;
  }
  template <int C, int... V>
  FX_ALWAYS_INLINE static void rows_from_columns(const __m256* moved, float* p, std::integer_sequence<int, V...>) {
    (_mm256_storeu_ps(p + 8 * V, blend_columns<C, V>(moved, std::make_integer_sequence<int, C - 1>{})), ...);
  }
  template <int C, int V, int... J>
  FX_ALWAYS_INLINE static __m256 blend_columns(const __m256* moved, std::integer_sequence<int, J...>) {
    __m256 out = moved[0];  // row-order vector V's lanes from column j, j = 1, ..., C - 1
    ((out = blend_immediate<kOddColumns<C, 8>.out_bits[V][J + 1]>(out, moved[J + 1])), ...);
    return out;
  }
  // Two classes of 8 rows (`stride` apart) to and from column order: cols[0] lane l is
  // p[l * stride], cols[1] lane l is p[l * stride + 1]. 8 loads or stores of the pairs and 8
  // or 4 shuffles, against two 8 x 8 transposes' 48 (a last column block of two classes, as
  // at C = 10). Only the pairs are accessed.
  static constexpr bool has_two_columns = true;
  FX_ALWAYS_INLINE static void load_two_columns(const float* p, int64_t stride, VecF* cols) {
    const auto pairs = [&](int l) {  // rows l and l + 1: a0 b0 a1 b1
      return _mm_movelh_ps(_mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + l * stride))),
                           _mm_castsi128_ps(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + (l + 1) * stride))));
    };
    const __m256 rows0145 = _mm256_insertf128_ps(_mm256_castps128_ps256(pairs(0)), pairs(4), 1);
    const __m256 rows2367 = _mm256_insertf128_ps(_mm256_castps128_ps256(pairs(2)), pairs(6), 1);
    cols[0].v = _mm256_shuffle_ps(rows0145, rows2367, _MM_SHUFFLE(2, 0, 2, 0));
    cols[1].v = _mm256_shuffle_ps(rows0145, rows2367, _MM_SHUFFLE(3, 1, 3, 1));
  }
  FX_ALWAYS_INLINE static void store_two_columns(const VecF* cols, float* p, int64_t stride) {
    const __m256 rows0145 = _mm256_unpacklo_ps(cols[0].v, cols[1].v);  // a0 b0 a1 b1 | a4 b4 a5 b5
    const __m256 rows2367 = _mm256_unpackhi_ps(cols[0].v, cols[1].v);
    const auto store_pairs = [&](int l, __m128 ab) {  // rows l and l + 1
      _mm_storel_pi(reinterpret_cast<__m64*>(p + l * stride), ab);
      _mm_storeh_pi(reinterpret_cast<__m64*>(p + (l + 1) * stride), ab);
    };
    store_pairs(0, _mm256_castps256_ps128(rows0145));
    store_pairs(2, _mm256_castps256_ps128(rows2367));
    store_pairs(4, _mm256_extractf128_ps(rows0145, 1));
    store_pairs(6, _mm256_extractf128_ps(rows2367, 1));
  }
  static __m256 lanes(const int32_t* table) { return _mm256_loadu_ps(reinterpret_cast<const float*>(table)); }
  // 8 x 8 transpose: r[i] lane j <-> r[j] lane i.
  static void transpose(VecF* r) {
    const __m256 t0 = _mm256_unpacklo_ps(r[0].v, r[1].v), t1 = _mm256_unpackhi_ps(r[0].v, r[1].v);
    const __m256 t2 = _mm256_unpacklo_ps(r[2].v, r[3].v), t3 = _mm256_unpackhi_ps(r[2].v, r[3].v);
    const __m256 t4 = _mm256_unpacklo_ps(r[4].v, r[5].v), t5 = _mm256_unpackhi_ps(r[4].v, r[5].v);
    const __m256 t6 = _mm256_unpacklo_ps(r[6].v, r[7].v), t7 = _mm256_unpackhi_ps(r[6].v, r[7].v);
    const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0].v = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1].v = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2].v = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3].v = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4].v = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5].v = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6].v = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7].v = _mm256_permute2f128_ps(u3, u7, 0x31);
  }
  static void split_exponent(VecF x, VecF& mant, VecF& expo) {
    __m256i bits = _mm256_castps_si256(x.v);
    expo.v = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127)));
    bits = _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007FFFFF)), _mm256_set1_epi32(0x3F800000));
    mant.v = _mm256_castsi256_ps(bits);
  }
  // table[i] for m's top 3 mantissa bits i (the permute reads the low 3 bits of the shifted
  // index); the table built from its values, not loaded, as in exp2_eighths.
  static constexpr bool has_log_lut8 = true;
  static VecF lookup8_by_mantissa(VecF m, const float* t) {
    const __m256 entries = _mm256_setr_ps(t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7]);
    return {_mm256_permutevar8x32_ps(entries, _mm256_srli_epi32(_mm256_castps_si256(m.v), 20))};
  }
  // 2^n from t = n + 127 + 1.5 * 2^23 (see vexp.h).
  static VecF pow2_from_biased(VecF t) { return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t.v), 23))}; }
  // label_count.h's count: ignored labels zeroed and counted, the rest's largest 32-bit halves
  // kept by an unsigned 32-bit max (AVX2 has no 64-bit one): a label is a class index when its
  // high half is 0 and its low half below the class count. Four operations per 4 labels where
  // the compiler's vectorisation of the generic loop took six, and each line asked for 2 KiB
  // ahead (32768 labels in L2, one thread: 7.4 -> 6.1 us, with the prefetch 4.1). Class counts
  // from 2^32 (never seen) take the exact loop of the tail throughout.
  static constexpr int64_t kLabelsAhead = 256;
  static int64_t count_kept_labels(const int64_t* labels, int64_t n, int64_t classes, int64_t ignore_index) {
    int64_t i = 0, kept = n;
    bool bad = false;
    if (uint64_t(classes) <= 0xFFFFFFFFu) {
      const __m256i ignore = _mm256_set1_epi64x(ignore_index);
      __m256i largest[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()}, ignored[2] = {largest[0], largest[1]};
      for (; i + 8 <= n; i += 8) {
        if (i + kLabelsAhead < n) FX_PREFETCH(labels + i + kLabelsAhead);  // (8 labels: a line)
        for (int k = 0; k < 2; ++k) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(labels + i + 4 * k));
          const __m256i is_ignored = _mm256_cmpeq_epi64(v, ignore);
          largest[k] = _mm256_max_epu32(largest[k], _mm256_andnot_si256(is_ignored, v));
          ignored[k] = _mm256_sub_epi64(ignored[k], is_ignored);  // -1 per ignored label
        }
      }
      alignas(32) uint32_t halves[8];
      alignas(32) int64_t counts[4];
      _mm256_store_si256(reinterpret_cast<__m256i*>(halves), _mm256_max_epu32(largest[0], largest[1]));
      _mm256_store_si256(reinterpret_cast<__m256i*>(counts), _mm256_add_epi64(ignored[0], ignored[1]));
      uint32_t low = 0, high = 0;
      for (int k = 0; k < 4; ++k) {
        low = halves[2 * k] > low ? halves[2 * k] : low;
        high |= halves[2 * k + 1];
        kept -= counts[k];
      }
      // (the zeros of ignored lanes pass unless classes is 0, where kept then says)
      bad = high != 0 || uint64_t(low) >= uint64_t(classes);
    }
    for (; i < n; ++i) {
      if (labels[i] == ignore_index) {
        --kept;
      } else {
        bad = bad || uint64_t(labels[i]) >= uint64_t(classes);
      }
    }
    return bad && kept != 0 ? -1 : kept;
  }
  // 8 validated labels (class indices fit int32) as floats: the low halves of the int64 lanes
  // packed in order and converted. Right as they are where ignore_index is a negative int32
  // (an ignored label's low half is that negative number, below every class).
  static constexpr bool has_label_load = true;
  static VecF load_labels_low(const int64_t* labels) {
    return low_halves(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(labels)),
                      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(labels + 4)));
  }
  // For any ignore_index: -1 where ignored, the int64 lanes made -1 there first.
  static VecF load_labels(const int64_t* labels, int64_t ignore_index) {
    const __m256i ignore = _mm256_set1_epi64x(ignore_index);
    const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(labels));
    const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(labels + 4));
    return low_halves(_mm256_or_si256(lo, _mm256_cmpeq_epi64(lo, ignore)),
                      _mm256_or_si256(hi, _mm256_cmpeq_epi64(hi, ignore)));
  }
  static VecF low_halves(__m256i lo, __m256i hi) {
    // lanes: lo0 lo1 hi0 hi1 | lo2 lo3 hi2 hi3, then the middle 64-bit pairs swapped
    const __m256 halves = _mm256_shuffle_ps(_mm256_castsi256_ps(lo), _mm256_castsi256_ps(hi), 0x88);
    return {_mm256_cvtepi32_ps(_mm256_permute4x64_epi64(_mm256_castps_si256(halves), 0xD8))};
  }
  // 2^(k/8) from t = k + 8 * 127 + 1.5 * 2^23: table[k & 7] (one lane permute) plus the
  // low bits of t shifted into the exponent (the table takes off the k & 7 that comes along,
  // see vexp.h; k + 8 * 127 < 2^11, so nothing reaches the sign).
  static constexpr bool has_lut8 = true;
  static VecF exp2_eighths(VecF t, const uint32_t* table) {
    const __m256i bits = _mm256_castps_si256(t.v);
    // Built from the (constant) values, not loaded: a float load of the table would have to be
    // repeated after every float store.
    const __m256i entries = _mm256_setr_epi32(int(table[0]), int(table[1]), int(table[2]), int(table[3]),
                                              int(table[4]), int(table[5]), int(table[6]), int(table[7]));
    const __m256 frac = _mm256_permutevar8x32_ps(_mm256_castsi256_ps(entries), bits);
    return {_mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(frac), _mm256_slli_epi32(bits, 20)))};
  }
};

struct VecD {
  using scalar = double;
  static constexpr int width = 4;
  __m256d v;

  static VecD load(const double* p) { return {_mm256_loadu_pd(p)}; }
  void store(double* p) const { _mm256_storeu_pd(p, v); }
  void stream(double* p) const { _mm256_stream_pd(p, v); }
  static void store_fence() { _mm_sfence(); }
  static VecD set1(double s) { return {_mm256_set1_pd(s)}; }

  friend VecD operator+(VecD a, VecD b) { return {_mm256_add_pd(a.v, b.v)}; }
  friend VecD operator-(VecD a, VecD b) { return {_mm256_sub_pd(a.v, b.v)}; }
  friend VecD operator*(VecD a, VecD b) { return {_mm256_mul_pd(a.v, b.v)}; }
  friend VecD operator/(VecD a, VecD b) { return {_mm256_div_pd(a.v, b.v)}; }
  friend VecD fmadd(VecD a, VecD b, VecD c) { return {_mm256_fmadd_pd(a.v, b.v, c.v)}; }
  friend VecD vmax(VecD a, VecD b) { return {_mm256_max_pd(a.v, b.v)}; }
  friend VecD vmin(VecD a, VecD b) { return {_mm256_min_pd(a.v, b.v)}; }
  friend VecD zero_below(VecD x, VecD lo, VecD res) {
    return {_mm256_andnot_pd(_mm256_cmp_pd(x.v, lo.v, _CMP_LT_OQ), res.v)};
  }
  double hsum() const {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
  double hmax() const {
    __m128d s = _mm_max_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_max_sd(s, _mm_unpackhi_pd(s, s)));
  }
  bool any_nan() const { return _mm256_movemask_pd(_mm256_cmp_pd(v, v, _CMP_UNORD_Q)) != 0; }
  using mask = __m256d;
  friend mask veq(VecD a, VecD b) { return _mm256_cmp_pd(a.v, b.v, _CMP_EQ_OQ); }
  friend mask vne(VecD a, VecD b) { return _mm256_cmp_pd(a.v, b.v, _CMP_NEQ_OQ); }
  friend mask vlt(VecD a, VecD b) { return _mm256_cmp_pd(a.v, b.v, _CMP_LT_OQ); }
  friend VecD vselect(mask m, VecD if_true, VecD if_false) {
    return {blend_lanes(if_false.v, if_true.v, m)};
  }
  // As VecF's.
  static VecD add_where(mask m, VecD acc, VecD x) { return {_mm256_add_pd(acc.v, _mm256_and_pd(m, x.v))}; }
  static VecD zero_unless(mask m, VecD x) { return {_mm256_and_pd(m, x.v)}; }
  static VecD pick_unless(mask m, VecD x, VecD acc) { return {_mm256_or_pd(acc.v, _mm256_andnot_pd(m, x.v))}; }
  static __m256i first_lanes(int n) {
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
  }
  static VecD load_first(const double* p, int n) { return {_mm256_maskload_pd(p, first_lanes(n))}; }
  void store_first(double* p, int n) const {
    if (n == 4) return store(p);
    __m128d part = _mm256_castpd256_pd128(v);
    if (n >= 2) {
      _mm_storeu_pd(p, part);
      part = _mm256_extractf128_pd(v, 1);
      p += 2;
      n -= 2;
    }
    if (n == 1) _mm_store_sd(p, part);
  }
  static void transpose(VecD* r) {
    const __m256d t0 = _mm256_unpacklo_pd(r[0].v, r[1].v), t1 = _mm256_unpackhi_pd(r[0].v, r[1].v);
    const __m256d t2 = _mm256_unpacklo_pd(r[2].v, r[3].v), t3 = _mm256_unpackhi_pd(r[2].v, r[3].v);
    r[0].v = _mm256_permute2f128_pd(t0, t2, 0x20);
    r[1].v = _mm256_permute2f128_pd(t1, t3, 0x20);
    r[2].v = _mm256_permute2f128_pd(t0, t2, 0x31);
    r[3].v = _mm256_permute2f128_pd(t1, t3, 0x31);
  }
  static void split_exponent(VecD x, VecD& mant, VecD& expo) {
    __m256i bits = _mm256_castpd_si256(x.v);
    // exponent bits placed under 2^52 read as 2^52 + biased exponent (no int64->double in AVX2)
    __m256i e = _mm256_or_si256(_mm256_srli_epi64(bits, 52), _mm256_set1_epi64x(0x4330000000000000LL));
    expo.v = _mm256_sub_pd(_mm256_castsi256_pd(e), _mm256_set1_pd(4503599627370496.0 + 1023.0));
    bits = _mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi64x(0x000FFFFFFFFFFFFFLL)),
                           _mm256_set1_epi64x(0x3FF0000000000000LL));
    mant.v = _mm256_castsi256_pd(bits);
  }
  // 2^n from t = n + 1023 + 1.5 * 2^52 (see vexp.h).
  static VecD pow2_from_biased(VecD t) { return {_mm256_castsi256_pd(_mm256_slli_epi64(_mm256_castpd_si256(t.v), 52))}; }
};

// The floats of x as doubles: lanes 0-3 in wide[0], 4-7 in wide[1].
FX_ALWAYS_INLINE void widen(VecF x, VecD* wide) {
  wide[0].v = _mm256_cvtps_pd(_mm256_castps256_ps128(x.v));
  wide[1].v = _mm256_cvtps_pd(_mm256_extractf128_ps(x.v, 1));
}

// Elementwise kernels (bce_body.h): a where x < lo, else b (NaN x: b); and res, or 0 where c is
// 0 (so a zero coefficient times inf is 0).
inline VecF select_below(VecF x, VecF lo, VecF a, VecF b) {
  return {_mm256_blendv_ps(b.v, a.v, _mm256_cmp_ps(x.v, lo.v, _CMP_LT_OQ))};
}
inline VecF zero_where_zero(VecF c, VecF res) {
  return {_mm256_andnot_ps(_mm256_cmp_ps(c.v, _mm256_setzero_ps(), _CMP_EQ_OQ), res.v)};
}
inline VecD select_below(VecD x, VecD lo, VecD a, VecD b) {
  return {_mm256_blendv_pd(b.v, a.v, _mm256_cmp_pd(x.v, lo.v, _CMP_LT_OQ))};
}
inline VecD zero_where_zero(VecD c, VecD res) {
  return {_mm256_andnot_pd(_mm256_cmp_pd(c.v, _mm256_setzero_pd(), _CMP_EQ_OQ), res.v)};
}
