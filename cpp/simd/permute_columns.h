// Lane tables for moving W contiguous rows of C classes (C <= 8) between row order (C vectors
// loaded straight from memory) and column order (vector j = class j of the W rows) with
// AVX-512's lane permutes, instead of a W x W transpose (64 shuffles each way for 16 floats, 24
// for 8 doubles):
// - column j, lane l, is element l C + j of the rows: vector (l C + j) / W, lane (l C + j) % W.
//   One two-source permute takes its lanes from vectors 0 and 1 (an index below 2W), then one
//   masked single-source permute per further vector (the low bits of the same index);
// - row-order vector v, lane q, is element e = W v + q: class e % C of row e / C. One
//   two-source permute of columns 0 and 1 (index row + W for column 1), then one masked
//   permute per further column.
// C (C - 1) permutes each way: 6 at C = 3, 56 at C = 8. ISA-independent; included inside the
// avx512 ISA namespace before the vector types that use it. Index and Mask: the permutes' lane
// index (int32 for floats, int64 for doubles) and lane mask types.
#pragma once

template <int C, int W = 16, class Index = int32_t, class Mask = uint16_t>
struct PermuteColumns {
  static_assert(C >= 1 && C <= W, "at most W classes");
  Index column_index[C][W] = {};  // column j: l C + j
  Mask column_mask[C][C] = {};    // column j: the lanes that come from row-order vector s
  Index row_index[C][W] = {};     // row-order vector v: the row, + W where the class is 1
  Mask row_mask[C][C] = {};       // row-order vector v: the lanes that hold class j

  constexpr PermuteColumns() {
    for (int j = 0; j < C; ++j)
      for (int l = 0; l < W; ++l) {
        const int e = l * C + j;
        column_index[j][l] = e;
        column_mask[j][e / W] |= Mask(1u << l);
      }
    for (int v = 0; v < C; ++v)
      for (int q = 0; q < W; ++q) {
        const int e = W * v + q, row = e / C, j = e % C;
        row_index[v][q] = row + (j == 1 ? W : 0);
        row_mask[v][j] |= Mask(1u << q);
      }
  }
};

template <int C>
constexpr PermuteColumns<C> kPermuteColumns{};
template <int C>
constexpr PermuteColumns<C, 8, int64_t, uint8_t> kPermuteColumnsD{};
