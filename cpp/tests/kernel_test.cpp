// Compares every ISA variant compiled in and supported on this CPU with the scalar kernels,
// through the driver (run_cross_entropy / run_rowop after select_isa), with no Python. Covers
// each dtype, short and long rows (the small-class, cached and recomputing paths, row tails),
// padded strides, weights, smoothing, ignored rows, per-row grad_output, non-finite logits, one
// and two threads (two threads on few long rows take the split-row path).
//
// Built with -DFASTXENT_TESTS=ON; tools/cross_test_aarch64.sh runs it under qemu-aarch64 so
// the NEON kernels are checked on an x86 machine. Exit status 0 when everything agrees.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "dispatch.h"
#include "driver.h"
#include "portable.h"
#include "thread_pool.h"

namespace fastxent {
namespace test {
#include "simd/half_scalar.h"
}  // namespace test
}  // namespace fastxent

using namespace fastxent;

namespace {

// splitmix64: the same numbers on every platform and compiler.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }
  double normal() {  // Box-Muller
    const double u = uniform() + 1e-300, v = uniform();
    return std::sqrt(-2 * std::log(u)) * std::cos(6.283185307179586 * v);
  }
  int64_t below(int64_t n) { return int64_t(next() % uint64_t(n)); }
};

int item_size(DType d) { return d == DType::f64 ? 8 : d == DType::f32 ? 4 : 2; }
const char* dtype_name(DType d) {
  return d == DType::f64 ? "float64" : d == DType::f32 ? "float32" : d == DType::f16 ? "float16" : "bfloat16";
}

// A buffer of `n` elements of dtype d, read and written as double.
struct Buffer {
  DType d;
  std::vector<unsigned char> bytes;
  Buffer(DType dt, int64_t n) : d(dt), bytes(size_t(n) * item_size(dt), 0) {}
  void* data() { return bytes.data(); }
  void set(int64_t i, double v) {
    unsigned char* p = bytes.data() + i * item_size(d);
    if (d == DType::f64) std::memcpy(p, &v, 8);
    if (d == DType::f32) {
      const float f = float(v);
      std::memcpy(p, &f, 4);
    }
    if (d == DType::f16) {
      const Half h = test::float_to_half(float(v));
      std::memcpy(p, &h, 2);
    }
    if (d == DType::bf16) {
      const BFloat16 h = test::float_to_bf16(float(v));
      std::memcpy(p, &h, 2);
    }
  }
  double get(int64_t i) const {
    const unsigned char* p = bytes.data() + i * item_size(d);
    if (d == DType::f64) {
      double v;
      std::memcpy(&v, p, 8);
      return v;
    }
    if (d == DType::f32) {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    uint16_t b;
    std::memcpy(&b, p, 2);
    return d == DType::f16 ? test::half_to_float(Half{b}) : test::bf16_to_float(BFloat16{b});
  }
};

struct Tol {
  double rtol, atol;
};
// Scalar and SIMD kernels sum in different orders; 16-bit outputs may round one unit apart.
Tol grad_tol(DType d) {
  switch (d) {
    case DType::f64: return {1e-12, 1e-15};
    case DType::f32: return {2e-5, 2e-7};
    case DType::f16: return {2.5e-3, 1.2e-7};
    default: return {1.6e-2, 1e-30};
  }
}
Tol loss_tol(DType d) { return d == DType::f64 ? Tol{1e-12, 1e-12} : Tol{2e-5, 2e-5}; }

bool close(double a, double b, Tol t) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  if (std::isinf(a) || std::isinf(b)) return a == b;
  return std::fabs(a - b) <= t.rtol * std::fmax(std::fabs(a), std::fabs(b)) + t.atol;
}

struct Case {
  DType dtype;
  int64_t rows, classes, pad;
  bool weighted, ignore, per_row_grad;
  double smoothing;
  int special;  // 0 none, 1 -inf entries, 2 a NaN, 3 very large logits, 4 a row of all -inf
  int threads;
  std::string describe() const {
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s rows=%lld C=%lld pad=%lld w=%d ign=%d rowgrad=%d eps=%g special=%d threads=%d",
                  dtype_name(dtype), (long long)rows, (long long)classes, (long long)pad, weighted, ignore,
                  per_row_grad, smoothing, special, threads);
    return buf;
  }
};

// Inputs of one case, shared by every ISA.
struct Inputs {
  Case c;
  int64_t stride;
  Buffer logits;
  std::vector<int64_t> labels;
  std::vector<double> weight64;
  std::vector<float> weight32;
  std::vector<double> grad_rows;
  double weight_total = 0;

  explicit Inputs(const Case& cs, Rng& rng)
      : c(cs), stride(cs.classes + cs.pad), logits(cs.dtype, cs.rows * (cs.classes + cs.pad)) {
    const double big = cs.dtype == DType::f16 ? 6e4 : cs.dtype == DType::f64 ? 1e300 : 1e36;
    for (int64_t i = 0; i < cs.rows; ++i) {
      for (int64_t j = 0; j < stride; ++j) logits.set(i * stride + j, j < cs.classes ? 3 * rng.normal() : 7.0);
      labels.push_back(cs.ignore && rng.below(4) == 0 ? -100 : rng.below(cs.classes));
      if (cs.special == 1 && cs.classes > 1) logits.set(i * stride + rng.below(cs.classes), -INFINITY);
      if (cs.special == 3) logits.set(i * stride + rng.below(cs.classes), (rng.below(2) ? big : -big));
    }
    if (cs.special == 2) logits.set(rng.below(cs.rows) * stride + rng.below(cs.classes), NAN);
    if (cs.special == 4) {
      const int64_t i = rng.below(cs.rows);
      for (int64_t j = 0; j < cs.classes; ++j) logits.set(i * stride + j, -INFINITY);
    }
    if (cs.weighted) {
      for (int64_t j = 0; j < cs.classes; ++j) weight64.push_back(0.25 + 2 * rng.uniform());
      for (double w : weight64) weight32.push_back(float(w)), weight_total += w;
    } else {
      weight_total = double(cs.classes);
    }
    if (cs.per_row_grad)
      for (int64_t i = 0; i < cs.rows; ++i) grad_rows.push_back(rng.normal());
  }

  CeArgs args() {
    CeArgs a;
    a.dtype = c.dtype;
    a.rows = c.rows;
    a.classes = c.classes;
    a.logits = logits.data();
    a.logits_stride = stride;
    a.labels = labels.data();
    a.ignore_index = -100;
    a.weight_f64 = c.weighted ? weight64.data() : nullptr;
    a.weight_f32 = c.weighted ? weight32.data() : nullptr;
    a.weight_total = weight_total;
    a.smoothing = c.smoothing;
    a.grad_scale = 0.75;
    a.grad_rows = c.per_row_grad ? grad_rows.data() : nullptr;
    return a;
  }
};

// The outputs of one ISA on one case.
struct Outputs {
  std::vector<double> row_loss, lse_fwd, fused_loss, lse_fused;
  Buffer grad_fused, grad_back;
  Buffer rows_softmax, rows_logsoftmax, rows_lse;
  explicit Outputs(const Case& c)
      : grad_fused(c.dtype, c.rows * (c.classes + 1)), grad_back(c.dtype, c.rows * (c.classes + 1)),
        rows_softmax(c.dtype, c.rows * c.classes), rows_logsoftmax(c.dtype, c.rows * c.classes),
        rows_lse(c.dtype, c.rows) {}
};

std::vector<double> lse_values(const Buffer& b, int64_t n) {
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[size_t(i)] = b.get(i);
  return v;
}

// Runs every entry point. The backward pass reads `saved_lse` (the scalar kernels' lse) so it
// is compared on the same input.
Outputs run_all(Inputs& in, const Buffer* saved_lse) {
  const Case& c = in.c;
  Outputs out(c);
  const DType lse_dt = c.dtype == DType::f64 ? DType::f64 : DType::f32;
  const int64_t gstride = c.classes + 1;  // a padded gradient: the stride is honoured

  Buffer lse(lse_dt, c.rows);
  out.row_loss.assign(size_t(c.rows), -1);
  CeArgs a = in.args();
  a.row_loss = out.row_loss.data();
  a.lse = lse.data();
  run_cross_entropy(a, CeMode::forward);
  out.lse_fwd = lse_values(lse, c.rows);

  Buffer lse2(lse_dt, c.rows);
  out.fused_loss.assign(size_t(c.rows), -1);
  a = in.args();
  a.row_loss = out.fused_loss.data();
  a.lse = lse2.data();
  a.grad = out.grad_fused.data();
  a.grad_stride = gstride;
  run_cross_entropy(a, CeMode::fused);
  out.lse_fused = lse_values(lse2, c.rows);

  Buffer back_lse = saved_lse ? *saved_lse : lse;
  a = in.args();
  a.lse = back_lse.data();
  a.grad = out.grad_back.data();
  a.grad_stride = gstride;
  run_cross_entropy(a, CeMode::backward);

  RowsArgs r;
  r.dtype = c.dtype;
  r.rows = c.rows;
  r.classes = c.classes;
  r.x = in.logits.data();
  r.x_stride = in.stride;
  r.out_stride = c.classes;
  r.out = out.rows_softmax.data();
  run_rowop(r, RowOp::softmax);
  r.out = out.rows_logsoftmax.data();
  run_rowop(r, RowOp::log_softmax);
  r.out = out.rows_lse.data();
  r.out_stride = 1;
  run_rowop(r, RowOp::logsumexp);
  return out;
}

int g_failures = 0;

void expect(bool ok, const std::string& isa, const Case& c, const char* what, int64_t i, double want,
            double got) {
  if (ok) return;
  if (++g_failures <= 25) {
    std::printf("MISMATCH %s %s [%lld]: scalar %.17g, %s %.17g\n  case: %s\n", isa.c_str(), what,
                (long long)i, want, isa.c_str(), got, c.describe().c_str());
  }
}

void compare(const std::string& isa, Inputs& in, const Outputs& want, const Outputs& got) {
  const Case& c = in.c;
  const Tol lt = loss_tol(c.dtype), gt = grad_tol(c.dtype);
  const Tol st = c.dtype == DType::f64 ? lt : Tol{2e-5, 2e-5};  // lse: in the compute type
  for (int64_t i = 0; i < c.rows; ++i) {
    const size_t k = size_t(i);
    expect(close(want.row_loss[k], got.row_loss[k], lt), isa, c, "forward loss", i, want.row_loss[k], got.row_loss[k]);
    expect(close(want.fused_loss[k], got.fused_loss[k], lt), isa, c, "fused loss", i, want.fused_loss[k], got.fused_loss[k]);
    if (in.labels[k] != -100) {  // lse is unspecified on ignored rows
      expect(close(want.lse_fwd[k], got.lse_fwd[k], st), isa, c, "forward lse", i, want.lse_fwd[k], got.lse_fwd[k]);
      expect(close(want.lse_fused[k], got.lse_fused[k], st), isa, c, "fused lse", i, want.lse_fused[k], got.lse_fused[k]);
    }
    const Tol rt = c.dtype == DType::f64 || c.dtype == DType::f32 ? gt : grad_tol(c.dtype);
    expect(close(want.rows_lse.get(i), got.rows_lse.get(i), c.dtype == DType::f64 ? lt : (c.dtype == DType::f32 ? st : gt)),
           isa, c, "logsumexp", i, want.rows_lse.get(i), got.rows_lse.get(i));
    // With smoothing, grad_j = p_j alpha - beta w_j can cancel to far below beta: then a float
    // rounding of beta's size (the row sum added in another order) is all the difference, which a
    // 16-bit result shows as a few units. (beta = grad scale x eps / C, weights below 2.25.)
    const double row_scale = 0.75 * (c.per_row_grad ? std::fabs(in.grad_rows[k]) : 1.0);
    const Tol rgt = {gt.rtol, std::fmax(gt.atol, 1e-6 * row_scale * c.smoothing / double(c.classes) * 2.25)};
    for (int64_t j = 0; j < c.classes; ++j) {
      const int64_t g = i * (c.classes + 1) + j, o = i * c.classes + j;
      expect(close(want.grad_fused.get(g), got.grad_fused.get(g), rgt), isa, c, "fused grad", g,
             want.grad_fused.get(g), got.grad_fused.get(g));
      expect(close(want.grad_back.get(g), got.grad_back.get(g), rgt), isa, c, "backward grad", g,
             want.grad_back.get(g), got.grad_back.get(g));
      expect(close(want.rows_softmax.get(o), got.rows_softmax.get(o), rt), isa, c, "softmax", o,
             want.rows_softmax.get(o), got.rows_softmax.get(o));
      // log_softmax near zero: an absolute error the size of lse's rounding.
      const Tol ls = {rt.rtol, rt.rtol * (1 + std::fabs(want.rows_lse.get(i)))};
      expect(close(want.rows_logsoftmax.get(o), got.rows_logsoftmax.get(o), ls), isa, c, "log_softmax", o,
             want.rows_logsoftmax.get(o), got.rows_logsoftmax.get(o));
    }
  }
}

}  // namespace

int main() {
  const std::vector<const KernelTable*> tables = supported_tables();
  std::printf("kernel_test: ISAs here:");
  for (const KernelTable* t : tables) std::printf(" %s", t->isa);
  std::printf("\n");

  const DType dtypes[] = {DType::f32, DType::f64, DType::f16, DType::bf16};
  // Every class count with its own instantiation on the rows-per-lane path (float rows up to
  // 16), that path's 2-4 column blocks (to 32 classes with AVX2, 64 with AVX-512) with ragged
  // last blocks, then block boundaries and long rows (their masked tails too).
  const int64_t class_counts[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17,
                                  18, 24, 31, 32, 33, 40, 47, 48, 63, 64, 65, 100, 257, 1000, 4099};
  Rng rng{12345};
  int cases = 0;
  for (DType d : dtypes) {
    for (int64_t classes : class_counts) {
      for (int variant = 0; variant < 6; ++variant) {
        Case c{d, 1 + rng.below(40), classes, variant % 2 ? 3 : 0, variant % 3 == 1, variant % 2 == 0,
               variant >= 4, variant == 2 || variant == 5 ? 0.1 : 0.0, int(rng.below(5)), 1 + (variant % 2)};
        if (rng.below(3) == 0) c.special = 0;
        cases++;
        set_num_threads(c.threads);
        Inputs in(c, rng);
        select_isa("scalar");
        const Outputs want = run_all(in, nullptr);
        // The scalar lse as the saved input of every ISA's backward pass.
        Buffer saved(d == DType::f64 ? DType::f64 : DType::f32, c.rows);
        for (int64_t i = 0; i < c.rows; ++i) saved.set(i, want.lse_fwd[size_t(i)]);
        for (const KernelTable* t : tables) {
          select_isa(t->isa);
          Outputs got = run_all(in, &saved);
          compare(t->isa, in, want, got);
        }
      }
    }
    // Long rows: blocked exp storage, recomputation past the cache size, and with two threads
    // on few rows the split-row path (partial statistics merged across threads).
    for (int64_t classes : {int64_t(20000), int64_t(70001), int64_t(150000)}) {
      for (int threads : {1, 2}) {
        Case c{d, 2, classes, 5, classes == 70001, true, threads == 2, classes == 20000 ? 0.2 : 0.0,
               threads == 2 ? 1 : 0, threads};
        c.ignore = false;
        cases++;
        set_num_threads(threads);
        Inputs in(c, rng);
        select_isa("scalar");
        const Outputs want = run_all(in, nullptr);
        Buffer saved(d == DType::f64 ? DType::f64 : DType::f32, c.rows);
        for (int64_t i = 0; i < c.rows; ++i) saved.set(i, want.lse_fwd[size_t(i)]);
        for (const KernelTable* t : tables) {
          select_isa(t->isa);
          compare(t->isa, in, want, run_all(in, &saved));
        }
      }
    }
  }
  std::printf("kernel_test: %d cases x %zu ISAs, %d mismatches\n", cases, tables.size(), g_failures);
  return g_failures == 0 ? 0 : 1;
}
