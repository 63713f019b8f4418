// The loss sums' one order of additions, shared by the driver (which sums per-row losses block
// by block) and the few-class kernels (which sum whole blocks of their own rows as they go, and
// then need not write those rows' losses): the same bits either way, and for any thread count.
// Included inside a namespace (each ISA's copy is its own).

// Rows per block of the loss sums.
constexpr int64_t kSumBlock = 256;
// Running sums per block: sixteen, which the compiler packs into vectors (with four, every add
// waited on the last one). Value k of the block goes to sum k % kSumLanes, in order.
constexpr int kSumLanes = 16;

// sums[0] after folding the running sums in halves (8 + 8, 4 + 4, 2 + 2, 1 + 1).
inline double fold_sums(double* sums) {
  for (int half = kSumLanes / 2; half > 0; half /= 2)
    for (int k = 0; k < half; ++k) sums[k] += sums[k + half];
  return sums[0];
}

// The sum of x[0, n) in that order (a 256-row block: 20 ns).
inline double sum_values(const double* x, int64_t n) {
  if (n < kSumLanes) {
    double total = 0;
    for (int64_t i = 0; i < n; ++i) total += x[i];
    return total;
  }
  double s[kSumLanes];
  // Started from the first values (a zeroed array compiled to a slow rep stos); 0.0 +: a sum
  // of -0.0 losses stays +0.0, as with sums started from zero.
  for (int k = 0; k < kSumLanes; ++k) s[k] = 0.0 + x[k];
  int64_t i = kSumLanes;
  for (; i + kSumLanes <= n; i += kSumLanes)
    for (int k = 0; k < kSumLanes; ++k) s[k] += x[i + k];
  for (int k = 0; i < n; ++i, ++k) s[k] += x[i];
  return fold_sums(s);
}
