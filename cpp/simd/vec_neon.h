// NEON vectors (aarch64): 4 floats, 2 doubles. Included inside the neon ISA namespace.
#pragma once
#include <arm_neon.h>

struct VecF {
  using scalar = float;
  static constexpr int width = 4;
  float32x4_t v;

  static VecF load(const float* p) { return {vld1q_f32(p)}; }
  void store(float* p) const { vst1q_f32(p, v); }
  void stream(float* p) const { vst1q_f32(p, v); }
  static void store_fence() {}
  static VecF set1(float s) { return {vdupq_n_f32(s)}; }
  // 16-bit storage: float16 with the aarch64 conversions (FPCR's rounding: nearest even),
  // bfloat16 as the high half of a float's bits. NaN stays NaN, inf stays inf.
  static VecF load(const Half* p) {
    return {vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const uint16_t*>(p))))};
  }
  void store(Half* p) const {
    vst1_u16(reinterpret_cast<uint16_t*>(p), vreinterpret_u16_f16(vcvt_f16_f32(v)));
  }
  static VecF load(const BFloat16* p) {
    const uint32x4_t wide = vmovl_u16(vld1_u16(reinterpret_cast<const uint16_t*>(p)));
    return {vreinterpretq_f32_u32(vshlq_n_u32(wide, 16))};
  }
  void store(BFloat16* p) const {
    const uint32x4_t b = vreinterpretq_u32_f32(v);
    const uint32x4_t odd = vandq_u32(vshrq_n_u32(b, 16), vdupq_n_u32(1));
    const uint32x4_t rounded = vaddq_u32(vaddq_u32(b, vdupq_n_u32(0x7FFF)), odd);
    // NaN: truncate and set the quiet bit (rounding could carry a NaN's payload into inf).
    const uint32x4_t quiet = vorrq_u32(b, vdupq_n_u32(0x400000));
    const uint32x4_t r = vbslq_u32(vceqq_f32(v, v), rounded, quiet);  // v == v: not NaN
    vst1_u16(reinterpret_cast<uint16_t*>(p), vshrn_n_u32(r, 16));
  }

  friend VecF operator+(VecF a, VecF b) { return {vaddq_f32(a.v, b.v)}; }
  friend VecF operator-(VecF a, VecF b) { return {vsubq_f32(a.v, b.v)}; }
  friend VecF operator*(VecF a, VecF b) { return {vmulq_f32(a.v, b.v)}; }
  friend VecF operator/(VecF a, VecF b) { return {vdivq_f32(a.v, b.v)}; }
  friend VecF fmadd(VecF a, VecF b, VecF c) { return {vfmaq_f32(c.v, a.v, b.v)}; }
  friend VecF vmax(VecF a, VecF b) { return {vmaxq_f32(a.v, b.v)}; }  // NaN propagates
  friend VecF vmin(VecF a, VecF b) { return {vminq_f32(a.v, b.v)}; }
  friend VecF zero_below(VecF x, VecF lo, VecF res) {
    uint32x4_t below = vcltq_f32(x.v, lo.v);
    return {vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(res.v), below))};
  }
  float hsum() const { return vaddvq_f32(v); }
  float hmax() const { return vmaxvq_f32(v); }
  bool any_nan() const { return vminvq_u32(vceqq_f32(v, v)) == 0; }
  // Masks and lane selection, for rows held one per lane (see vec_avx2.h). NEON has no masked
  // loads or stores: a short row goes through a small buffer. Transpose: the kernel body's.
  using mask = uint32x4_t;
  friend mask veq(VecF a, VecF b) { return vceqq_f32(a.v, b.v); }
  friend mask vne(VecF a, VecF b) { return vmvnq_u32(vceqq_f32(a.v, b.v)); }
  friend mask vlt(VecF a, VecF b) { return vcltq_f32(a.v, b.v); }
  friend VecF vselect(mask m, VecF if_true, VecF if_false) { return {vbslq_f32(m, if_true.v, if_false.v)}; }
  static VecF load_first(const float* p, int n) {
    if (n == width) return load(p);
    float buf[width] = {};
    for (int l = 0; l < n; ++l) buf[l] = p[l];
    return load(buf);
  }
  void store_first(float* p, int n) const {
    if (n == width) return store(p);
    float buf[width];
    store(buf);
    for (int l = 0; l < n; ++l) p[l] = buf[l];
  }
  static void split_exponent(VecF x, VecF& mant, VecF& expo) {
    uint32x4_t bits = vreinterpretq_u32_f32(x.v);
    expo.v = vcvtq_f32_s32(vsubq_s32(vreinterpretq_s32_u32(vshrq_n_u32(bits, 23)), vdupq_n_s32(127)));
    bits = vorrq_u32(vandq_u32(bits, vdupq_n_u32(0x007FFFFF)), vdupq_n_u32(0x3F800000));
    mant.v = vreinterpretq_f32_u32(bits);
  }
  // 2^n from t = n + 127 + 1.5 * 2^23 (see vexp.h).
  static VecF pow2_from_biased(VecF t) { return {vreinterpretq_f32_u32(vshlq_n_u32(vreinterpretq_u32_f32(t.v), 23))}; }
};

struct VecD {
  using scalar = double;
  static constexpr int width = 2;
  float64x2_t v;

  static VecD load(const double* p) { return {vld1q_f64(p)}; }
  void store(double* p) const { vst1q_f64(p, v); }
  void stream(double* p) const { vst1q_f64(p, v); }
  static void store_fence() {}
  static VecD set1(double s) { return {vdupq_n_f64(s)}; }

  friend VecD operator+(VecD a, VecD b) { return {vaddq_f64(a.v, b.v)}; }
  friend VecD operator-(VecD a, VecD b) { return {vsubq_f64(a.v, b.v)}; }
  friend VecD operator*(VecD a, VecD b) { return {vmulq_f64(a.v, b.v)}; }
  friend VecD operator/(VecD a, VecD b) { return {vdivq_f64(a.v, b.v)}; }
  friend VecD fmadd(VecD a, VecD b, VecD c) { return {vfmaq_f64(c.v, a.v, b.v)}; }
  friend VecD vmax(VecD a, VecD b) { return {vmaxq_f64(a.v, b.v)}; }
  friend VecD vmin(VecD a, VecD b) { return {vminq_f64(a.v, b.v)}; }
  friend VecD zero_below(VecD x, VecD lo, VecD res) {
    uint64x2_t below = vcltq_f64(x.v, lo.v);
    return {vreinterpretq_f64_u64(vbicq_u64(vreinterpretq_u64_f64(res.v), below))};
  }
  double hsum() const { return vaddvq_f64(v); }
  double hmax() const { return vmaxvq_f64(v); }
  bool any_nan() const {
    uint64x2_t eq = vceqq_f64(v, v);
    return (vgetq_lane_u64(eq, 0) & vgetq_lane_u64(eq, 1)) == 0;
  }
  using mask = uint64x2_t;
  friend mask veq(VecD a, VecD b) { return vceqq_f64(a.v, b.v); }
  friend mask vne(VecD a, VecD b) { return vreinterpretq_u64_u32(vmvnq_u32(vreinterpretq_u32_u64(vceqq_f64(a.v, b.v)))); }
  friend mask vlt(VecD a, VecD b) { return vcltq_f64(a.v, b.v); }
  friend VecD vselect(mask m, VecD if_true, VecD if_false) { return {vbslq_f64(m, if_true.v, if_false.v)}; }
  static VecD load_first(const double* p, int n) {
    if (n == width) return load(p);
    double buf[width] = {};
    for (int l = 0; l < n; ++l) buf[l] = p[l];
    return load(buf);
  }
  void store_first(double* p, int n) const {
    if (n == width) return store(p);
    double buf[width];
    store(buf);
    for (int l = 0; l < n; ++l) p[l] = buf[l];
  }
  static void split_exponent(VecD x, VecD& mant, VecD& expo) {
    uint64x2_t bits = vreinterpretq_u64_f64(x.v);
    expo.v = vcvtq_f64_s64(vsubq_s64(vreinterpretq_s64_u64(vshrq_n_u64(bits, 52)), vdupq_n_s64(1023)));
    bits = vorrq_u64(vandq_u64(bits, vdupq_n_u64(0x000FFFFFFFFFFFFFULL)), vdupq_n_u64(0x3FF0000000000000ULL));
    mant.v = vreinterpretq_f64_u64(bits);
  }
  // 2^n from t = n + 1023 + 1.5 * 2^52 (see vexp.h).
  static VecD pow2_from_biased(VecD t) { return {vreinterpretq_f64_u64(vshlq_n_u64(vreinterpretq_u64_f64(t.v), 52))}; }
};

// Elementwise kernels (bce_body.h): a where x < lo, else b (NaN x: b); and res, or 0 where c is
// 0 (so a zero coefficient times inf is 0).
inline VecF select_below(VecF x, VecF lo, VecF a, VecF b) {
  return {vbslq_f32(vcltq_f32(x.v, lo.v), a.v, b.v)};
}
inline VecF zero_where_zero(VecF c, VecF res) {
  const uint32x4_t is_zero = vceqq_f32(c.v, vdupq_n_f32(0.0f));
  return {vreinterpretq_f32_u32(vbicq_u32(vreinterpretq_u32_f32(res.v), is_zero))};
}
inline VecD select_below(VecD x, VecD lo, VecD a, VecD b) {
  return {vbslq_f64(vcltq_f64(x.v, lo.v), a.v, b.v)};
}
inline VecD zero_where_zero(VecD c, VecD res) {
  const uint64x2_t is_zero = vceqq_f64(c.v, vdupq_n_f64(0.0));
  return {vreinterpretq_f64_u64(vbicq_u64(vreinterpretq_u64_f64(res.v), is_zero))};
}
