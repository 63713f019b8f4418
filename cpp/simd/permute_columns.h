// Lane tables for moving 16 contiguous rows of C classes (C <= 8) between row order (C vectors
// loaded straight from memory) and column order (vector j = class j of the 16 rows) with
// AVX-512's lane permutes, instead of a 16 x 16 transpose (64 shuffles each way):
// - column j, lane l, is element l C + j of the rows: vector (l C + j) / 16, lane (l C + j) % 16.
//   One two-source permute takes its lanes from vectors 0 and 1 (a 5-bit index), then one
//   masked single-source permute per further vector (the low 4 bits of the same index);
// - row-order vector v, lane q, is element e = 16 v + q: class e % C of row e / C. One
//   two-source permute of columns 0 and 1 (index row + 16 for column 1), then one masked
//   permute per further column.
// C (C - 1) permutes each way: 6 at C = 3, 56 at C = 8. ISA-independent; included inside the
// avx512 ISA namespace before the vector types that use it.
#pragma once

template <int C>
struct PermuteColumns {
  static_assert(C >= 1 && C <= 16, "at most 16 classes");
  int32_t column_index[C][16] = {};  // column j: l C + j
  uint16_t column_mask[C][C] = {};   // column j: the lanes that come from row-order vector s
  int32_t row_index[C][16] = {};     // row-order vector v: the row, + 16 where the class is 1
  uint16_t row_mask[C][C] = {};      // row-order vector v: the lanes that hold class j

  constexpr PermuteColumns() {
    for (int j = 0; j < C; ++j)
      for (int l = 0; l < 16; ++l) {
        const int e = l * C + j;
        column_index[j][l] = e;
        column_mask[j][e / 16] |= uint16_t(1u << l);
      }
    for (int v = 0; v < C; ++v)
      for (int q = 0; q < 16; ++q) {
        const int e = 16 * v + q, row = e / C, j = e % C;
        row_index[v][q] = row + (j == 1 ? 16 : 0);
        row_mask[v][j] |= uint16_t(1u << q);
      }
  }
};

template <int C>
constexpr PermuteColumns<C> kPermuteColumns{};
