// Portable float16 / bfloat16 <-> float conversions, one value at a time: for Vec1 (the scalar
// ISA and row tails) and the driver. Plain integer code, no intrinsics, so every ISA and the
// driver round the same way as the vector paths: to nearest, ties to even; NaN stays NaN (made
// quiet), inf stays inf, float16 overflow gives inf. Included inside a namespace (each ISA's
// own), like the other simd headers.
#pragma once

inline uint32_t float_bits(float f) {
  uint32_t b;
  FX_MEMCPY(&b, &f, 4);
  return b;
}

inline float bits_float(uint32_t b) {
  float f;
  FX_MEMCPY(&f, &b, 4);
  return f;
}

inline float half_to_float(Half h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  const uint32_t expo = (h.bits >> 10) & 0x1Fu, mant = h.bits & 0x3FFu;
  if (expo == 0x1F) return bits_float(sign | 0x7F800000u | (mant << 13));  // inf, NaN
  if (expo != 0) return bits_float(sign | ((expo + 112) << 23) | (mant << 13));
  // Zero or subnormal: mant * 2^-24, exact in float.
  const float v = float(mant) * 5.9604644775390625e-8f;
  return sign ? -v : v;
}

inline Half float_to_half(float f) {
  uint32_t b = float_bits(f);
  const uint16_t sign = uint16_t((b >> 16) & 0x8000u);
  b &= 0x7FFFFFFFu;
  uint16_t out;
  if (b >= 0x47800000u) {  // |f| >= 2^16 (past the largest half even after rounding), inf, NaN
    out = b > 0x7F800000u ? uint16_t(0x7E00u | ((b >> 13) & 0x1FFu)) : uint16_t(0x7C00u);
  } else if (b < 0x38800000u) {
    // Below 2^-14, the result is subnormal or zero: adding 0.5 puts the half subnormal's bits
    // at the bottom of the float mantissa, rounded to nearest even by the float addition.
    out = uint16_t(float_bits(bits_float(b) + 0.5f) - 0x3F000000u);
  } else {
    // Normal: rebias the exponent and round off 13 mantissa bits (a carry into the exponent
    // is right, up to inf for values that round past 65504).
    const uint32_t odd = (b >> 13) & 1u;
    out = uint16_t((b + 0xC8000FFFu + odd) >> 13);  // 0xC8000000 = (15 - 127) << 23
  }
  return Half{uint16_t(out | sign)};
}

inline float bf16_to_float(BFloat16 h) { return bits_float(uint32_t(h.bits) << 16); }

inline BFloat16 float_to_bf16(float f) {
  const uint32_t b = float_bits(f);
  if ((b & 0x7FFFFFFFu) > 0x7F800000u) return BFloat16{uint16_t((b >> 16) | 0x40u)};  // quiet NaN
  return BFloat16{uint16_t((b + 0x7FFFu + ((b >> 16) & 1u)) >> 16)};
}

// double -> float rounded to odd: truncated, with the last bit set when inexact. Rounding that
// float to a 16-bit type then equals rounding the double directly (float keeps more than two
// extra bits), which a plain double -> float -> 16-bit chain does not (two roundings).
inline float float_round_odd(double d) {
  const float f = float(d);
  uint32_t b = float_bits(f);
  if (double(f) == d || (b & 1u) || d != d) return f;
  const double ad = d < 0 ? -d : d, af = f < 0 ? -double(f) : double(f);
  b = ad > af ? b + 1 : b - 1;  // sign-magnitude: +1 moves away from zero (also from inf to max)
  return bits_float(b);
}

// A double rounded once to a storage type.
template <class T>
inline T narrow_from_double(double d) {
  if constexpr (std::is_same_v<T, Half>) {
    return float_to_half(float_round_odd(d));
  } else if constexpr (std::is_same_v<T, BFloat16>) {
    return float_to_bf16(float_round_odd(d));
  } else {
    return T(d);
  }
}
