// Lane tables for moving W contiguous rows of C classes (C odd, so gcd(C, W) = 1 for a
// power-of-two W) between row order (C vectors loaded straight from memory) and column order
// (vector j = class j of the W rows), by blends and one lane permute per vector instead of a
// W x W transpose. Because C is odd, the W elements of one class sit at W different lanes of
// the C row-order vectors: blending the C vectors by the lane masks below gathers them into
// one vector, and a permute puts them in row order (and the reverse for stores).
// ISA-independent; included inside each ISA namespace before the vector types that use it.
#pragma once

template <int C, int W>
struct OddColumns {
  static_assert(C % 2 == 1 && C < W, "odd C below the vector width");
  // Row order -> columns: column j takes lane p from vector from_vector[j][p], then lane l of
  // the column is lane gather[j][l] of that blend.
  int32_t in_mask[C][C][W] = {};  // -1 where lane p of column j's blend comes from vector s
  int32_t gather[C][W] = {};
  // Columns -> row order: column j permuted by scatter[j] has row l's element at the lane
  // where row order keeps it; row-order vector v takes lane q from column out_class[v][q].
  int32_t scatter[C][W] = {};
  int32_t out_mask[C][C][W] = {};  // -1 where lane q of vector v is class j
  // The same masks as lane bits (bit p set where the lane mask is -1), for immediate blends.
  int in_bits[C][C] = {};
  int out_bits[C][C] = {};

  constexpr OddColumns() {
    int inv = 1;  // C^-1 mod W
    while ((inv * C) % W != 1) inv += 2;
    for (int j = 0; j < C; ++j) {
      for (int p = 0; p < W; ++p) {
        const int row = (((p - j) % W + W) % W) * inv % W;  // the row whose class j is at lane p
        const int from = (row * C + j) / W;
        in_mask[j][from][p] = -1;
        scatter[j][p] = row;
      }
      for (int l = 0; l < W; ++l) gather[j][l] = (l * C + j) % W;
    }
    for (int v = 0; v < C; ++v)
      for (int q = 0; q < W; ++q) out_mask[v][(v * W + q) % C][q] = -1;
    for (int a = 0; a < C; ++a)
      for (int b = 0; b < C; ++b)
        for (int p = 0; p < W; ++p) {
          if (in_mask[a][b][p]) in_bits[a][b] |= 1 << p;
          if (out_mask[a][b][p]) out_bits[a][b] |= 1 << p;
        }
  }
};

template <int C, int W>
constexpr OddColumns<C, W> kOddColumns{};
