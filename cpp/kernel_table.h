// One table of kernel entry points per instruction set; the driver picks one at run time.
#pragma once
#include "bce_problem.h"
#include "problem.h"

namespace fastxent {

struct KernelTable {
  const char* isa;
  // Rows [r0, r1): row_loss and lse.
  void (*forward_rows)(const CeArgs&, int64_t r0, int64_t r1);
  // Rows [r0, r1): row_loss, lse and grad in one pass over the logits.
  void (*fused_rows)(const CeArgs&, int64_t r0, int64_t r1);
  // Rows [r0, r1): grad from the saved lse.
  void (*backward_rows)(const CeArgs&, int64_t r0, int64_t r1);
  // Classes [c0, c1) of one row, for splitting a long row across threads.
  RowStats (*slice_stats)(const CeArgs&, int64_t row, int64_t c0, int64_t c1, bool smoothing);
  // grad_j = exp(z_j - m) * alpha - beta * w_j on classes [c0, c1) of one row. 16-bit rows skip
  // the label's class (the caller writes it) and return the sum of the others' exp(z_j - m).
  double (*slice_grad)(const CeArgs&, int64_t row, int64_t c0, int64_t c1, double m, double alpha,
                       double beta);
  void (*rowop_rows)(const RowsArgs&, RowOp op, int64_t r0, int64_t r1);
  // Binary cross-entropy on elements [e0, e1) (e0 a multiple of a.period): writes loss / grad
  // when asked, returns the summed loss (0 without want_total).
  double (*bce_range)(const BceArgs&, int64_t e0, int64_t e1);
  // Labels not ignore_index, or -1 when one is not a class index either (label_count.h).
  int64_t (*count_kept_labels)(const int64_t* labels, int64_t n, int64_t classes, int64_t ignore_index);
  // The same for contiguous int32 labels, widened into out.
  int64_t (*widen_kept_labels)(const int32_t* labels, int64_t n, int64_t classes, int64_t ignore_index,
                               int64_t* out);
};

extern const KernelTable kTableScalar;
#if defined(FASTXENT_HAVE_AVX2)
extern const KernelTable kTableAvx2;
#endif
#if defined(FASTXENT_HAVE_AVX512)
extern const KernelTable kTableAvx512;
#endif
#if defined(FASTXENT_HAVE_NEON)
extern const KernelTable kTableNeon;
#endif

}  // namespace fastxent
