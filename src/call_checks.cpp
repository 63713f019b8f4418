#include "call_checks.h"

#include <string>

namespace nb = nanobind;

namespace fastxent {

DType float_dtype(const nb::dlpack::dtype& dt, int dtype_code, const char* name) {
  const bool is_float = dt.code == uint8_t(nb::dlpack::dtype_code::Float) && dt.lanes == 1;
  if (dtype_code < 0) {
    if (is_float && dt.bits == 32) return DType::f32;
    if (is_float && dt.bits == 64) return DType::f64;
    if (is_float && dt.bits == 16) return DType::f16;
    if (dt.code == uint8_t(nb::dlpack::dtype_code::Bfloat) && dt.bits == 16 && dt.lanes == 1) return DType::bf16;
    throw nb::type_error((std::string(name) + " must be float16, bfloat16, float32 or float64").c_str());
  }
  if (dtype_code > int(DType::bf16)) throw nb::value_error("unknown dtype code");
  const DType d = DType(dtype_code);
  const int bits = d == DType::f64 ? 64 : d == DType::f32 ? 32 : 16;
  if (dt.bits != bits || dt.lanes != 1) {
    throw nb::type_error((std::string(name) + ": item size does not match the dtype code").c_str());
  }
  if ((d == DType::f32 || d == DType::f64) && !is_float) {
    throw nb::type_error((std::string(name) + " must be float32 or float64 for this dtype code").c_str());
  }
  return d;
}

void check_same_storage(const nb::dlpack::dtype& dt, DType want, const char* name) {
  const int bits = want == DType::f64 ? 64 : want == DType::f32 ? 32 : 16;
  const bool float_kind = dt.code == uint8_t(nb::dlpack::dtype_code::Float);
  if (dt.bits != bits || dt.lanes != 1 || (bits > 16 && !float_kind)) {
    throw nb::type_error((std::string(name) + " does not have the dtype the call needs").c_str());
  }
}

IntType int_type(const nb::dlpack::dtype& dt) {
  const bool is_signed = dt.code == uint8_t(nb::dlpack::dtype_code::Int);
  const bool is_unsigned = dt.code == uint8_t(nb::dlpack::dtype_code::UInt);
  if (!(is_signed || is_unsigned) || dt.lanes != 1) throw nb::type_error("labels must have an integer dtype");
  switch (dt.bits) {
    case 8: return is_signed ? IntType::i8 : IntType::u8;
    case 16: return is_signed ? IntType::i16 : IntType::u16;
    case 32: return is_signed ? IntType::i32 : IntType::u32;
    case 64: return is_signed ? IntType::i64 : IntType::u64;
  }
  throw nb::type_error("labels must have an integer dtype");
}

}  // namespace fastxent
