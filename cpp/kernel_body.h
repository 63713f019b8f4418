// The one kernel body, compiled once per instruction set. Each isa_*.cpp includes it inside
// its own namespace, after the vector types (VecF, VecD, Vec1) and vexp for that ISA, and
// defines FASTXENT_TABLE_NAME / FASTXENT_ISA_NAME. Only C library calls (portable.h's FX_*) and
// this namespace's own inline functions are used here, so no inline symbol compiled with
// wide-vector flags can be picked by the linker for a narrower ISA.
//
// Rows are stored as T (float, double, or the 16-bit Half / BFloat16) and computed in S =
// compute_t<T> (double for double, float otherwise): vector loads widen T to S, stores round S
// to T. For T = S the loads and stores are plain, so float and double rows run the same code
// as without 16-bit support. lse and weights are in S.
#include <type_traits>

#include "label_count.h"
#include "loss_sums.h"

template <class S>
struct VecFor;
template <>
struct VecFor<float> {
  using type = VecF;
};
template <>
struct VecFor<double> {
  using type = VecD;
};

template <class T>
struct ComputeOf {
  using type = float;  // float, Half, BFloat16
};
template <>
struct ComputeOf<double> {
  using type = double;
};
// (A dependent alias: in parameter lists it is not deduced, T is given or deduced from x.)
template <class T>
using compute_t = typename ComputeOf<T>::type;
// 16-bit storage: never holds an intermediate value (that would round twice).
template <class T>
constexpr bool kNarrow = !std::is_same_v<T, compute_t<T>>;

// One element of a row, widened to the compute type.
template <class T>
inline compute_t<T> load1(const T* p) {
  return Vec1<compute_t<T>>::load(p).v;
}

constexpr double kInf = FX_INF;
// A row whose logits and gradient fit in L2 together is processed with the exp values kept
// there (one exp per logit); longer rows recompute exp in a second pass instead.
constexpr int64_t kCachedRowBytes = 4096 * 1024;
// The online max is taken per block of this many logits; block sums are added in double,
// which keeps a 128k-class row accurate to float32 rounding.
constexpr int64_t kBlock = 1024;
constexpr double kSmoothSumScale = 5.421010862427522e-20;  // 2^-64
// Below this magnitude a class weight counts as 0: the smallest normal float. (A subnormal
// bound reads as 0 where denormals are zeroed, as on XLA's threads, and 0 * -inf then got in.)
constexpr double kTinyWeight = 1.1754943508222875e-38;

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Four independent vector accumulators (latency hiding) plus scalar ones for the tail (and for
// every term on the scalar ISA, whose "vector" is one element). Scalar terms and, at the end,
// the vector lanes are added in double with each add's rounding error carried along (TwoSum):
// a short row that is mostly tail (C < 16 with AVX-512) otherwise adds its terms one by one
// onto a sum near 1, each add rounding by up to half an ulp (7.5 ulp of float softmax at C = 8,
// 5 in double at C = 15). total() is once per block of kBlock terms, so its cost is small.
template <class S>
struct Accum {
  using V = typename VecFor<S>::type;
  V lanes[4] = {V::set1(0), V::set1(0), V::set1(0), V::set1(0)};
  double tail[4] = {0, 0, 0, 0}, tail_err[4] = {0, 0, 0, 0};

  // sum += x, err += the rounding error of that add (exact for finite values).
  static void two_sum(double& sum, double& err, double x) {
    const double next = sum + x, x_part = next - sum;
    err += (sum - (next - x_part)) + (x - x_part);
    sum = next;
  }
  template <class VV>
  void add(VV v, int k) {
    if constexpr (std::is_same_v<VV, V> && V::width > 1) {
      lanes[k] = lanes[k] + v;
    } else {
      two_sum(tail[k], tail_err[k], double(v.v));
    }
  }
  double total() const {
    if constexpr (V::width > 1 && sizeof(S) == 4) {
      // No scalar terms (rows with masked tails): the lanes' tree sum is the total.
      if (tail[0] == 0 && tail[1] == 0 && tail[2] == 0 && tail[3] == 0 && tail_err[0] == 0 &&
          tail_err[1] == 0 && tail_err[2] == 0 && tail_err[3] == 0)
        return double(((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])).hsum());
    }
    double sums[4], errs[4];
    for (int k = 0; k < 4; ++k) {
      sums[k] = tail[k];
      errs[k] = tail_err[k];
    }
    if constexpr (V::width > 1) {
      if constexpr (sizeof(S) == 4) {
        // float lanes: their tree sum (in float, within an ulp or two), added once.
        two_sum(sums[0], errs[0], double(((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])).hsum()));
      } else {
        // double lanes: every lane into four independent chains (short dependency chains).
        alignas(64) S lane[4][V::width];
        for (int k = 0; k < 4; ++k) lanes[k].store(lane[k]);
        for (int l = 0; l < V::width; ++l)
          for (int k = 0; k < 4; ++k) two_sum(sums[k], errs[k], double(lane[k][l]));
      }
    }
    double sum = sums[0], err = errs[0];
    for (int k = 1; k < 4; ++k) {
      two_sum(sum, err, sums[k]);
      err += errs[k];
    }
    // An inf term makes the error NaN (inf - inf): the sum is then inf (or NaN) as it stands.
    return sum - sum == 0 ? sum + err : sum;
  }
};

// Calls f(vector, offset, accumulator index) over [0, n): four vectors at a time, then one,
// then scalar for the tail. f is a generic lambda so the same code runs at every width.
template <class S, class F>
FX_ALWAYS_INLINE void for_each_vector(int64_t n, F&& f) {
  using V = typename VecFor<S>::type;
  constexpr int64_t W = V::width;
  int64_t j = 0;
  for (; j + 4 * W <= n; j += 4 * W) {
    f(V{}, j, 0);
    f(V{}, j + W, 1);
    f(V{}, j + 2 * W, 2);
    f(V{}, j + 3 * W, 3);
  }
  for (; j + W <= n; j += W) f(V{}, j, 0);
  for (; j < n; ++j) f(Vec1<S>{}, j, 0);
}

// Rows stored as S on a vector ISA take the last n % W elements of a row as one vector too:
// masked loads and stores, the lanes past the row's end made neutral. One element at a time
// (a scalar exp each, summed in double with TwoSum) had cost more than the row's whole vector
// part at 17-64 classes (65536 x 24 float fused, AVX-512, one thread: 7.3 ms against 5.2 ms at
// 65536 x 32). 16-bit rows keep the scalar tail (their loads widen and have no masked form).
template <class T>
constexpr bool kMaskedTail = !kNarrow<T> && VecFor<compute_t<T>>::type::width > 1;

// Lanes 0 .. n - 1 set.
template <class V>
FX_ALWAYS_INLINE typename V::mask first_lanes_mask(int n) {
  using S = typename V::scalar;
  alignas(64) static constexpr S kLaneIndex[16] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
  static_assert(V::width <= 16, "kLaneIndex covers the widest vector");
  return vlt(V::load(kLaneIndex), V::set1(S(n)));
}

// Like for_each_vector, but with kMaskedTail<T> the last n % W elements go to tail(j, lanes)
// as one masked vector instead of to f one at a time.
template <class T, class F, class Tail>
FX_ALWAYS_INLINE void for_each_vector_tail(int64_t n, F&& f, Tail&& tail) {
  using S = compute_t<T>;
  if constexpr (kMaskedTail<T>) {
    constexpr int64_t W = VecFor<S>::type::width;
    const int64_t body = n - n % W;
    for_each_vector<S>(body, f);
    if (body < n) tail(body, int(n - body));
  } else {
    for_each_vector<S>(n, f);
  }
}

// r's first n lanes stored at p in pieces of W/2, W/4, ... 1 lanes, each inside [p, p + n): for
// gradients written over the logits, whose next row is read right after. Its first loads would
// overlap the whole vector of a masked store, which cannot forward, and wait for that store to
// reach the cache: about 15 ns a row (inplace at 100 classes, AVX-512: 20% slower than out=).
template <class V>
FX_ALWAYS_INLINE void store_first_within(V r, typename V::scalar* p, int n) {
  using S = typename V::scalar;
  alignas(64) S lanes[V::width];
  r.store(lanes);
  int k = 0;
  for (int piece = V::width / 2; piece >= 1; piece /= 2) {  // (unrolled: fixed sizes)
    if (n & piece) {
      FX_MEMCPY(p + k, lanes + k, sizeof(S) * static_cast<decltype(sizeof(S))>(piece));
      k += piece;
    }
  }
}

// Rows read from memory ask for the data this far ahead: the hardware prefetchers alone keep
// too few lines in flight for a loop that also computes an exp per element.
constexpr int64_t kPrefetchBytes = 16 * 1024;
constexpr int64_t kLineBytes = 64;

// Asks for the cache lines of [p + ahead, p + ahead + bytes) (bytes a multiple of a line), where
// p + ahead may be past the row (the next row, for contiguous rows) or the array.
template <class T>
FX_ALWAYS_INLINE void prefetch_ahead(const T* p, int64_t bytes) {
  const char* at = reinterpret_cast<const char*>(p) + kPrefetchBytes;
  for (int64_t b = 0; b < bytes; b += kLineBytes) FX_PREFETCH(at + b);
}

// The max of n elements; with kPrefetch (a first read of data from memory), the lines
// kPrefetchBytes ahead are requested on the way.
template <class T, bool kPrefetch = false>
inline compute_t<T> max_of(const T* x, int64_t n) {
  using S = compute_t<T>;
  using V = typename VecFor<S>::type;
  V lanes[4] = {V::set1(-kInf), V::set1(-kInf), V::set1(-kInf), V::set1(-kInf)};
  S tail = -kInf;
  for_each_vector_tail<T>(n, [&](auto v, int64_t j, int k) {
    using VV = decltype(v);
    if constexpr (std::is_same_v<VV, V>) {
      // Once per 4 vectors (for_each_vector's unrolled step), which is a whole number of lines.
      constexpr int64_t kStepBytes = 4 * V::width * int64_t(sizeof(T));
      if constexpr (kPrefetch && kStepBytes % kLineBytes == 0) {
        if (k == 0) prefetch_ahead(x + j, kStepBytes);
      }
      lanes[k] = vmax(lanes[k], V::load(x + j));
    } else {
      const S xj = load1(x + j);
      tail = xj > tail ? xj : tail;
    }
  }, [&](int64_t j, int lanes_left) {
    if constexpr (kMaskedTail<T>) {
      const V xs = vselect(first_lanes_mask<V>(lanes_left), V::load_first(x + j, lanes_left), V::set1(S(-kInf)));
      lanes[1] = vmax(lanes[1], xs);
    }
  });
  S m = vmax(vmax(lanes[0], lanes[1]), vmax(lanes[2], lanes[3])).hmax();
  return tail > m ? tail : m;
}

template <class T>
inline bool has_nan(const T* x, int64_t n) {
  for (int64_t j = 0; j < n; ++j)
    if (load1(x + j) != load1(x + j)) return true;
  return false;
}

template <class S>
inline double sum_of(const S* x, int64_t n) {
  double total = 0;
  for (int64_t j = 0; j < n; ++j) total += x[j];
  return total;
}

template <class T>
inline void fill_zero(T* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = T{};  // all bits zero: +0 in every type
}

struct BlockSums {
  double s = 0, t = 0, wsum = 0;
};

// One block: s = sum exp(x - m); with kSmooth also t = sum w (x - m) and wsum = sum w.
// With kStore the exp values are written to out (in S; it may be x itself when T = S).
template <class T, bool kStore, bool kSmooth, bool kWeighted>
inline BlockSums exp_block(const T* x, compute_t<T>* out, int64_t n, compute_t<T> m,
                           const compute_t<T>* w) {
  using S = compute_t<T>;
  using V = typename VecFor<S>::type;
  Accum<S> acc_s, acc_t, acc_w;
  const V vm = V::set1(m);
  for_each_vector_tail<T>(n, [&](auto v, int64_t j, int k) {
    using VV = decltype(v);
    VV shift;
    if constexpr (std::is_same_v<VV, V>) {
      shift = vm;
    } else {
      shift = VV::set1(m);
    }
    if constexpr (VV::width > 1) FX_PREFETCH(reinterpret_cast<const char*>(x + j) + kPrefetchBytes);
    VV shifted = VV::load(x + j) - shift;
    VV e = vexp<VV, true>(shifted);
    if constexpr (kStore) e.store(out + j);
    acc_s.add(e, k);
    if constexpr (kSmooth) {
      // Scaled by 2^-64 so that float sums of logit-sized terms near FLT_MAX do not overflow.
      const VV scaled = shifted * VV::set1(S(kSmoothSumScale));
      if constexpr (kWeighted) {
        VV wj = VV::load(w + j);
        // A class of weight (or target) 0 counts 0, also at a -inf logit (0 * -inf is NaN).
        const VV zero = VV::set1(S(0));
        acc_t.add(zero_below(vmax(wj, zero - wj), VV::set1(S(kTinyWeight)), wj * scaled), k);
        acc_w.add(wj, k);
      } else {
        acc_t.add(scaled, k);
      }
    }
  }, [&](int64_t j, int lanes_left) {
    if constexpr (kMaskedTail<T>) {
      // Past the row: -inf, whose exp is 0 (x - m is -inf: m is finite or +inf here).
      const auto live = first_lanes_mask<V>(lanes_left);
      const V shifted = vselect(live, V::load_first(x + j, lanes_left), V::set1(S(-kInf))) - vm;
      const V e = vexp<V, true>(shifted);
      if constexpr (kStore) e.store_first(out + j, lanes_left);
      acc_s.add(e, 1);
      if constexpr (kSmooth) {
        const V scaled = shifted * V::set1(S(kSmoothSumScale));
        const V zero = V::set1(S(0));
        if constexpr (kWeighted) {
          // wj is 0 past the row, so zero_below zeroes those lanes (kTinyWeight is normal).
          const V wj = V::load_first(w + j, lanes_left);
          acc_t.add(zero_below(vmax(wj, zero - wj), V::set1(S(kTinyWeight)), wj * scaled), 1);
          acc_w.add(wj, 1);
        } else {
          acc_t.add(vselect(live, scaled, zero), 1);
        }
      }
    }
  });
  BlockSums r;
  r.s = acc_s.total();
  if constexpr (kSmooth) {
    r.t = double(acc_t.total()) / kSmoothSumScale;
    r.wsum = kWeighted ? double(acc_w.total()) : double(n);
  }
  return r;
}

// A gradient larger than this (bytes) is written with streaming (non-temporal) stores when its
// rows are long: it cannot stay in cache for the caller anyway, and streaming saves reading each
// output line into the cache before overwriting it (a third of the memory traffic).
constexpr int64_t kStreamBytes = int64_t(32) << 20;
constexpr int64_t kStreamMinClasses = 4096;

template <class T>
inline bool stream_output(const CeArgs& a) {
  return !kNarrow<T> && a.classes >= kStreamMinClasses &&
         a.rows * a.classes * int64_t(sizeof(T)) >= kStreamBytes;
}

// out_j = f(VV, j) for j in [0, n), like for_each_vector, but the vectors are streamed to
// aligned addresses: a scalar peel up to the vector alignment, streamed vectors, a scalar tail.
template <class S, class F>
FX_ALWAYS_INLINE void for_each_streamed(S* out, int64_t n, F&& f) {
  using V = typename VecFor<S>::type;
  constexpr int64_t W = V::width;
  constexpr uint64_t kAlign = sizeof(S) * W;
  const uint64_t addr = reinterpret_cast<uint64_t>(out);
  int64_t j = 0;
  if (addr % sizeof(S) == 0) {
    const int64_t peel = min64(n, int64_t(((kAlign - addr % kAlign) % kAlign) / sizeof(S)));
    for (; j < peel; ++j) f(Vec1<S>{}, j).store(out + j);
    for (; j + W <= n; j += W) f(V{}, j).stream(out + j);
  }
  for (; j < n; ++j) f(Vec1<S>{}, j).store(out + j);
}

// out_j = in_j * alpha - beta * w_j (beta * 1 when unweighted), rounded to T; in may be out
// (not when streamed).
template <class T, bool kSmooth, bool kWeighted>
inline void scale_row(const compute_t<T>* in, T* out, int64_t n, compute_t<T> alpha,
                      compute_t<T> beta, const compute_t<T>* w, bool stream = false,
                      bool tail_within = false) {
  using S = compute_t<T>;
  auto scaled = [&](auto v, int64_t j) {
    using VV = decltype(v);
    VV r = VV::load(in + j) * VV::set1(alpha);
    if constexpr (kSmooth) {
      VV b = kWeighted ? VV::load(w + j) * VV::set1(beta) : VV::set1(beta);
      r = r - b;
    }
    return r;
  };
  if constexpr (!kNarrow<T>) {
    if (stream) return for_each_streamed<S>(out, n, scaled);
  }
  for_each_vector_tail<T>(n, [&](auto v, int64_t j, int) { scaled(v, j).store(out + j); },
                          [&](int64_t j, int lanes_left) {
    if constexpr (kMaskedTail<T>) {
      using V = typename VecFor<S>::type;
      V r = V::load_first(in + j, lanes_left) * V::set1(alpha);
      if constexpr (kSmooth) r = r - (kWeighted ? V::load_first(w + j, lanes_left) * V::set1(beta) : V::set1(beta));
      if (tail_within) {
        store_first_within(r, out + j, lanes_left);
      } else {
        r.store_first(out + j, lanes_left);
      }
    }
  });
}

// Where a row's first maximum is, for accuracy: the block of the first maximum (blocks are
// scanned in order and only a strictly larger block maximum moves it) and whether the label is
// the first maximum of its block (its index then, else -1).
struct ArgmaxProbe {
  int64_t label;
  int64_t first_max_block = 0;
  int64_t first_max_in_label_block = -1;
};

// The label's index within its block when it is that block's first maximum bm, else -1: the
// label's logit must equal bm and every logit before it be smaller (a vectorised max of the
// prefix, only for rows whose label holds the block's max).
template <class T>
inline int64_t label_if_first_max(const T* xb, int64_t label_in_block, double bm) {
  if (double(load1(xb + label_in_block)) != bm) return -1;
  if (label_in_block > 0 && double(max_of(xb, label_in_block)) >= bm) return -1;
  return label_in_block;
}

// The label's logit is the first maximum of the row x (n logits) and the row has no NaN. The
// sum of exps is NaN for a NaN logit, and also for a +inf one (inf - inf), which argmax takes
// as the max like any other: only then is the row scanned for NaN.
template <class T>
inline bool label_is_argmax(const ArgmaxProbe& probe, const RowStats& st, double zy, const T* x,
                            int64_t n) {
  return zy == st.m && probe.first_max_block == probe.label / kBlock &&
         probe.first_max_in_label_block == probe.label &&
         (st.s == st.s || (st.m == kInf && !has_nan(x, n)));
}

// Max, sum of exp and smoothing sums of a row (or slice) in one read: the max is updated per
// block and the running sums are rescaled when it grows. A block of -inf before any finite
// value is skipped, so -inf - -inf never happens. With kStore the exp values go to out,
// each block relative to the running max at that block, recorded in block_shift[block].
// 16-bit rows with a label (skip >= 0, its index in x) keep its exp apart: st.rest + st.ey.
template <class T, bool kStore, bool kSmooth, bool kWeighted>
inline RowStats online_stats(const T* x, int64_t n, const compute_t<T>* w,
                             compute_t<T>* out = nullptr, double* block_shift = nullptr,
                             int64_t skip = -1, ArgmaxProbe* probe = nullptr) {
  using S = compute_t<T>;
  RowStats st{-kInf, 0.0, 0.0, 0.0, false};
  for (int64_t c0 = 0, k = 0; c0 < n; c0 += kBlock, ++k) {
    const int64_t len = min64(kBlock, n - c0);
    const T* xb = x + c0;
    const S* wb = kWeighted ? w + c0 : nullptr;
    const double bm = max_of(xb, len);
    if (probe) {
      if (bm > st.m) probe->first_max_block = k;
      if (probe->label >= c0 && probe->label < c0 + len) {
        const int64_t j = label_if_first_max(xb, probe->label - c0, bm);
        probe->first_max_in_label_block = j < 0 ? -1 : c0 + j;
      }
    }
    if (bm > st.m) {
      if (st.s != 0) {
        const double rescale = FX_EXP(st.m - bm);
        st.s *= rescale;
        if constexpr (kNarrow<T>) {
          st.rest *= rescale;
          st.ey *= rescale;
        }
      }
      if (kSmooth && st.wsum > 0) st.t -= st.wsum * (bm - st.m);
      st.m = bm;
    }
    if constexpr (kStore) block_shift[k] = st.m;
    if (st.m == -kInf) {
      st.nan = st.nan || has_nan(xb, len);
      if (kSmooth) st.wsum += kWeighted ? sum_of(wb, len) : double(len);
      if constexpr (kStore) fill_zero(out + c0, len);
      continue;
    }
    if constexpr (kNarrow<T>) {
      if (skip >= c0 && skip < c0 + len) {
        // The label's block: the classes before and after it, and the label itself in double.
        const int64_t ky = skip - c0;
        BlockSums b = exp_block<T, kStore, kSmooth, kWeighted>(xb, kStore ? out + c0 : nullptr,
                                                               ky, S(st.m), wb);
        const BlockSums after = exp_block<T, kStore, kSmooth, kWeighted>(
            xb + ky + 1, kStore ? out + skip + 1 : nullptr, len - ky - 1, S(st.m),
            kWeighted ? wb + ky + 1 : nullptr);
        const double dy = double(load1(x + skip)) - st.m;
        const double ey = FX_EXP(dy);
        if constexpr (kStore) out[skip] = S(ey);
        st.rest += b.s + after.s;
        st.ey = ey;
        st.s += (b.s + after.s) + ey;
        if constexpr (kSmooth) {
          const double wy = kWeighted ? double(wb[ky]) : 1.0;
          st.t += b.t + after.t + wy * dy;
          st.wsum += kWeighted ? b.wsum + after.wsum + wy : double(len);
        }
        continue;
      }
    }
    BlockSums b = exp_block<T, kStore, kSmooth, kWeighted>(xb, kStore ? out + c0 : nullptr, len,
                                                           S(st.m), wb);
    st.s += b.s;
    if constexpr (kNarrow<T>) st.rest += b.s;
    st.t += b.t;
    st.wsum += b.wsum;
  }
  if (st.nan) {
    st.s = FX_NAN;
    st.rest = st.s;
  }
  return st;
}

// Rows of at most this many blocks keep their exp values in cache between the two passes.
constexpr int64_t kMaxCachedBlocks = 1024;

// The logits, the output and (16-bit rows) the float row of exp values must fit together.
template <class T>
inline bool row_fits_cache(int64_t n) {
  const int64_t bytes_per_class = 2 * int64_t(sizeof(T)) + (kNarrow<T> ? int64_t(sizeof(float)) : 0);
  return n * bytes_per_class <= kCachedRowBytes && n <= kMaxCachedBlocks * kBlock;
}

// Where a cached row keeps its exp values: in the output row itself, or in a row of S allocated
// once per call: for 16-bit rows (rounding exp values to 16 bits before scaling would round
// twice), and for gradients streamed to memory (the exp values then stay in this thread's cache,
// and the output is written once, without being read into the cache first).
template <class T>
struct ExpRow {
  using S = compute_t<T>;
  S* scratch = nullptr;
  bool separate;
  // (The row is this thread's kept scratch, scratch.h: no page faults on every call.)
  ExpRow(int64_t n, bool separate_row) : separate(kNarrow<T> || separate_row) {
    using size = decltype(sizeof(S));  // size_t, without a system header in this namespace
    if (separate && n > 0) scratch = static_cast<S*>(kept_scratch(ScratchSlot::exp_row, sizeof(S) * size(n)));
  }
  ExpRow(const ExpRow&) = delete;
  ExpRow& operator=(const ExpRow&) = delete;
  bool ok() const { return !separate || scratch != nullptr; }
  S* row(T* out) const {
    if constexpr (kNarrow<T>) {
      return scratch;
    } else {
      return separate ? scratch : out;
    }
  }
};

// Second pass over exp values e stored by online_stats<kStore>: out_j = e_j * alpha *
// exp(shift_block - m) - beta * w_j, which is p_j * coef - beta * w_j. e may be out.
// next_row: the logits of the row to come (or null), asked into L2 block by block meanwhile:
// this pass reads only cache, so without it the memory reads of the next row would wait for it.
template <class T, bool kSmooth, bool kWeighted>
inline void scale_blocks(const compute_t<T>* e, T* out, int64_t n, const double* block_shift,
                         double m, double alpha, compute_t<T> beta, const compute_t<T>* w,
                         bool stream = false, const T* next_row = nullptr, bool tail_within = false) {
  using S = compute_t<T>;
  for (int64_t c0 = 0, k = 0; c0 < n; c0 += kBlock, ++k) {
    if (next_row) {
      const char* next = reinterpret_cast<const char*>(next_row + c0);
      const int64_t bytes = min64(kBlock, n - c0) * int64_t(sizeof(T));
      for (int64_t b = 0; b < bytes; b += kLineBytes) FX_PREFETCH_L2(next + b);
    }
    // (A row of one block, or a block holding the row's max: the factor is alpha, no exp call.)
    const S factor = S(block_shift[k] == m ? alpha : alpha * FX_EXP(block_shift[k] - m));
    scale_row<T, kSmooth, kWeighted>(e + c0, out + c0, min64(kBlock, n - c0), factor, beta,
                                     kWeighted ? w + c0 : nullptr, stream, tail_within);
  }
}

template <class T, bool kSmooth, bool kWeighted>
inline double write_grad_sum(const T* x, T* out, int64_t n, compute_t<T> shift, compute_t<T> alpha,
                             compute_t<T> beta, const compute_t<T>* w);

// out_j = exp(x_j - shift) * alpha - beta * w_j; out may be x.
template <class T, bool kSmooth, bool kWeighted>
inline void write_grad(const T* x, T* out, int64_t n, compute_t<T> shift, compute_t<T> alpha,
                       compute_t<T> beta, const compute_t<T>* w, bool stream = false) {
  using S = compute_t<T>;
  if constexpr (kNarrow<T>) {
    // Through a float block buffer (see write_grad_sum); the sum is not needed.
    write_grad_sum<T, kSmooth, kWeighted>(x, out, n, shift, alpha, beta, w);
    return;
  } else {
    if (stream) {
      for_each_streamed<S>(out, n, [&](auto v, int64_t j) {
        using VV = decltype(v);
        if constexpr (VV::width > 1) FX_PREFETCH(reinterpret_cast<const char*>(x + j) + kPrefetchBytes);
        VV r = vexp(VV::load(x + j) - VV::set1(shift)) * VV::set1(alpha);
        if constexpr (kSmooth) r = r - (kWeighted ? VV::load(w + j) * VV::set1(beta) : VV::set1(beta));
        return r;
      });
      return;
    }
  }
  for_each_vector_tail<T>(n, [&](auto v, int64_t j, int) {
    using VV = decltype(v);
    // (Once per vector: the same line asked for twice costs less than a test.)
    if constexpr (VV::width > 1) FX_PREFETCH(reinterpret_cast<const char*>(x + j) + kPrefetchBytes);
    VV r = vexp(VV::load(x + j) - VV::set1(shift)) * VV::set1(alpha);
    if constexpr (kSmooth) {
      VV b = kWeighted ? VV::load(w + j) * VV::set1(beta) : VV::set1(beta);
      r = r - b;
    }
    r.store(out + j);
  }, [&](int64_t j, int lanes_left) {
    if constexpr (kMaskedTail<T>) {
      using V = typename VecFor<S>::type;
      // (The lanes past the row compute from 0 and are not stored.)
      V r = vexp(V::load_first(x + j, lanes_left) - V::set1(shift)) * V::set1(alpha);
      if constexpr (kSmooth) r = r - (kWeighted ? V::load_first(w + j, lanes_left) * V::set1(beta) : V::set1(beta));
      r.store_first(out + j, lanes_left);
    }
  });
}

// write_grad that also returns sum_j exp(x_j - shift) (per block in S, added in double). Only
// for 16-bit rows (backward, split rows). Per block, exp goes to a float buffer in L1 first and
// is scaled and rounded to T in a second loop: one loop doing both is so long (exp, then the
// 16-bit rounding) that too few iterations fit in the out-of-order window to hide its latency.
// Local accumulators rather than a capturing lambda: a 16-bit store may alias anything, so
// captured accumulators would go through memory on every step.
template <class T, bool kSmooth, bool kWeighted>
inline double write_grad_sum(const T* x, T* out, int64_t n, compute_t<T> shift, compute_t<T> alpha,
                             compute_t<T> beta, const compute_t<T>* w) {
  using S = compute_t<T>;
  using V = typename VecFor<S>::type;
  constexpr int64_t W = V::width;
  alignas(64) S e[kBlock];
  const V vshift = V::set1(shift);
  double total = 0;
  for (int64_t c0 = 0; c0 < n; c0 += kBlock) {
    const int64_t len = min64(kBlock, n - c0);
    const T* xb = x + c0;
    V acc0 = V::set1(0), acc1 = V::set1(0);
    int64_t j = 0;
    for (; j + 2 * W <= len; j += 2 * W) {
      const V e0 = vexp(V::load(xb + j) - vshift), e1 = vexp(V::load(xb + j + W) - vshift);
      e0.store(e + j);
      e1.store(e + j + W);
      acc0 = acc0 + e0;
      acc1 = acc1 + e1;
    }
    for (; j + W <= len; j += W) {
      const V e0 = vexp(V::load(xb + j) - vshift);
      e0.store(e + j);
      acc0 = acc0 + e0;
    }
    S tail = 0;
    for (; j < len; ++j) {
      const Vec1<S> e0 = vexp(Vec1<S>::load(xb + j) - Vec1<S>::set1(shift));
      e0.store(e + j);
      tail += e0.v;
    }
    total += double((acc0 + acc1).hsum() + tail);
    scale_row<T, kSmooth, kWeighted>(e, out + c0, len, alpha, beta, kWeighted ? w + c0 : w);
  }
  return total;
}

// -log p_y = lse - z_y = log1p(rest / ey): exact for confident rows, where lse - z_y cancels.
inline double nll_from_rest(double rest, double ey, double lse_minus_zy) {
  return ey > 0 ? FX_LOG1P(rest / ey) : lse_minus_zy;
}

template <class S>
inline const S* weight_of(const CeArgs& a) {
  if constexpr (std::is_same_v<S, float>) {
    return a.weight_f32;
  } else {
    return a.weight_f64;
  }
}

// Per-row coefficients of the gradient: grad_j = p_j * p_coef - smooth_coef * w_j - label_coef [j == y].
// p_coef includes z_coef, the z-loss term's 2 z_loss lse (times its scale).
struct GradCoefs {
  double p_coef, smooth_coef, label_coef, z_coef;
};

inline double z_loss_coef(const CeArgs& a, int64_t i, double lse) {
  if (a.z_loss == 0.0) return 0.0;
  return a.z_grad_scale * (a.grad_rows ? a.grad_rows[i] : 1.0) * 2.0 * a.z_loss * lse;
}

// The label's entry p_y * p_coef - smooth_coef * w_y - label_coef, in double from the label's
// logit: it cancels when p_y is near 1, so the rounded stored exp value would not do.
inline double label_grad_of(double zy, double shift, double log_s, const GradCoefs& c, double wy) {
  return FX_EXP((zy - shift) - log_s) * c.p_coef - c.smooth_coef * wy - c.label_coef;
}

inline GradCoefs grad_coefs(const CeArgs& a, int64_t i, double wy, double lse) {
  const double g = a.grad_scale * (a.grad_rows ? a.grad_rows[i] : 1.0);
  const double label_coef = g * (1.0 - a.smoothing) * wy;
  const double smooth_coef = g * a.smoothing / double(a.classes);
  const double z_coef = z_loss_coef(a, i, lse);
  return {label_coef + smooth_coef * a.weight_total + z_coef, smooth_coef, label_coef, z_coef};
}

// The per-row outputs of a forward pass besides the loss: lse, the z-loss term, accuracy.
template <class S>
inline void store_row_outputs(const CeArgs& a, int64_t i, double lse, bool correct) {
  static_cast<S*>(a.lse)[i] = S(lse);
  if (a.row_z) a.row_z[i] = a.z_loss * lse * lse;
  if (a.correct) a.correct[i] = correct;
}

template <class T, bool kSmooth, bool kWeighted>
void ce_rows(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  using S = compute_t<T>;
  const int64_t C = a.classes;
  const T* logits = static_cast<const T*>(a.logits);
  T* grad = static_cast<T*>(a.grad);
  S* lse_out = static_cast<S*>(a.lse);
  const S* w = weight_of<S>(a);
  const bool want_cache = mode == CeMode::fused && row_fits_cache<T>(C);
  // In place, the logits' lines are in cache already and are overwritten where they are.
  const bool in_place = a.grad == a.logits;
  // Streamed gradients of cached rows are scaled from a scratch row of exp values, which stays
  // in this thread's cache, so the output is written once and never read.
  const bool stream = mode != CeMode::forward && !in_place && stream_output<T>(a);
  const ExpRow<T> exp_row(want_cache ? C : 0, stream);
  const bool cached = want_cache && exp_row.ok();
  double block_shift[kMaxCachedBlocks];
  for (int64_t i = r0; i < r1; ++i) {
    const T* x = logits + i * a.logits_stride;
    T* g = grad ? grad + i * a.grad_stride : nullptr;
    const int64_t y = a.labels[i];
    if (y == a.ignore_index) {
      if (mode != CeMode::backward) {
        a.row_loss[i] = 0.0;
        store_row_outputs<S>(a, i, 0.0, false);
      }
      if (mode != CeMode::forward) fill_zero(g, C);
      continue;
    }
    const double wy = w ? double(w[y]) : 1.0;
    const double zy = load1(x + y);  // read before an in-place gradient overwrites it
    // log_s is kept apart from the max: m + log s rounds to m for huge logits, and
    // (m - z_y) + log s does not.
    double lse, shift, log_s = 0.0, inv_s = 1.0;
    RowStats st{};
    if (mode == CeMode::backward) {
      lse = shift = double(lse_out[i]);
    } else {
      // 16-bit rows keep the label's exp apart (skip = y): see label_grad_from_rest.
      ArgmaxProbe probe{y};
      ArgmaxProbe* want_probe = a.correct ? &probe : nullptr;
      if (cached) {
        st = online_stats<T, true, kSmooth, kWeighted>(x, C, w, exp_row.row(g), block_shift,
                                                       kNarrow<T> ? y : -1, want_probe);
      } else {
        st = online_stats<T, false, kSmooth, kWeighted>(x, C, w, nullptr, nullptr,
                                                        kNarrow<T> ? y : -1, want_probe);
      }
      log_s = FX_LOG(st.s);
      lse = st.m + log_s;
      shift = st.m;
      inv_s = 1.0 / st.s;
      double nll = (st.m - zy) + log_s;
      if constexpr (kNarrow<T>) nll = nll_from_rest(st.rest, st.ey, nll);
      // A label of target weight 0 (weight 0, or label_smoothing = 1) adds 0, even at nll = inf.
      const double label_weight = (1.0 - a.smoothing) * wy;
      double loss = label_weight != 0.0 ? label_weight * nll : 0.0;
      if constexpr (kSmooth) {
        loss += smoothing_loss(a, st.m, log_s, st.t);
      }
      a.row_loss[i] = loss;
      store_row_outputs<S>(a, i, lse, want_probe && label_is_argmax(probe, st, zy, x, C));
      if (mode == CeMode::forward) continue;
    }
    const GradCoefs c = grad_coefs(a, i, wy, lse);
    if constexpr (kNarrow<T>) {
      if (mode == CeMode::backward) {
        // The other classes' exp(z - lse) summed on the way (the label's entry is skipped).
        const S sh = S(shift), alpha = S(c.p_coef), beta = S(c.smooth_coef);
        st.rest = write_grad_sum<T, kSmooth, kWeighted>(x, g, y, sh, alpha, beta, w) +
                  write_grad_sum<T, kSmooth, kWeighted>(x + y + 1, g + y + 1, C - y - 1, sh,
                                                        alpha, beta, kWeighted ? w + y + 1 : w);
        st.ey = FX_EXP(zy - lse);
      }
    }
    if (cached) {
      scale_blocks<T, kSmooth, kWeighted>(exp_row.row(g), g, C, block_shift, shift,
                                          c.p_coef * inv_s, S(c.smooth_coef), w, stream,
                                          i + 1 < r1 ? x + a.logits_stride : nullptr, in_place);
    } else if (!kNarrow<T> || mode != CeMode::backward) {
      write_grad<T, kSmooth, kWeighted>(x, g, C, S(shift), S(c.p_coef * inv_s), S(c.smooth_coef),
                                        w, stream);
    }
    // Streamed stores are weakly ordered: the label's entry below must land after them.
    if (stream) VecFor<S>::type::store_fence();
    if constexpr (kNarrow<T>) {
      const bool renormalise = mode != CeMode::backward || sum_is_one<float>(st.rest + st.ey, lse, C);
      g[y] = narrow_from_double<T>(label_grad_from_rest(st.rest, st.ey, c.label_coef,
                                                        c.smooth_coef, a.weight_total, wy,
                                                        c.z_coef, renormalise));
    } else {
      g[y] = S(label_grad_of(zy, shift, log_s, c, wy));
    }
  }
}

#include "kernel_small_rows.h"

// Probability targets: per row, q_j = w_j ((1 - eps) t_j + eps / C) is built in a scratch row and
// plays the part of the smoothing weights in online_stats: wsum = sum q = A and
// t = sum q_j (z_j - m), so loss = A log s - t, and grad_j = g (p_j A - q_j) (+ the z-loss term).
template <class T, bool kWeighted>
void ce_soft_rows(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  using S = compute_t<T>;
  using size = decltype(sizeof(S));
  const int64_t C = a.classes;
  const T* logits = static_cast<const T*>(a.logits);
  const S* targets = static_cast<const S*>(a.targets);
  T* grad = static_cast<T*>(a.grad);
  S* lse_io = static_cast<S*>(a.lse);
  const S* w = weight_of<S>(a);
  S* q = static_cast<S*>(FX_MALLOC(sizeof(S) * size(C)));
  const bool want_cache = mode == CeMode::fused && row_fits_cache<T>(C);
  const ExpRow<T> exp_row(want_cache ? C : 0, false);
  const bool cached = want_cache && exp_row.ok();
  double block_shift[kMaxCachedBlocks];
  const S keep = S(1.0 - a.smoothing), spread = S(a.smoothing / double(C));
  for (int64_t i = r0; i < r1; ++i) {
    const T* x = logits + i * a.logits_stride;
    T* g = grad ? grad + i * a.grad_stride : nullptr;
    const S* t = targets + i * a.targets_stride;
    if (q == nullptr) {  // out of memory: a NaN loss rather than a wrong one
      if (mode != CeMode::backward) a.row_loss[i] = FX_NAN;
      continue;
    }
    // Summed a block at a time, the block sums in double: in one float sum per lane, a row of
    // 32000 equal small targets beside a large one lost 1e-5 of the total (each small add to
    // the large lane rounded the same way).
    double total = 0.0;
    for (int64_t c0 = 0; c0 < C; c0 += kBlock) {
      Accum<S> target_sum;
      for_each_vector<S>(min64(kBlock, C - c0), [&](auto v, int64_t j, int k) {
        using VV = decltype(v);
        const int64_t at = c0 + j;
        VV qj = fmadd(VV::load(t + at), VV::set1(keep), VV::set1(spread));
        if constexpr (kWeighted) qj = qj * VV::load(w + at);
        qj.store(q + at);
        target_sum.add(qj, k);
      });
      total += target_sum.total();
    }
    double lse, shift, inv_s = 1.0;
    if (mode == CeMode::backward) {
      lse = shift = double(lse_io[i]);
    } else {
      const RowStats st = cached ? online_stats<T, true, true, true>(x, C, q, exp_row.row(g), block_shift)
                                 : online_stats<T, false, true, true>(x, C, q);
      const double log_s = FX_LOG(st.s);
      lse = st.m + log_s;
      shift = st.m;
      inv_s = 1.0 / st.s;
      a.row_loss[i] = weighted_nll_sum(st.m, log_s, st.wsum, st.t);  // sum_j q_j (lse - z_j)
      store_row_outputs<S>(a, i, lse, false);
      if (mode == CeMode::forward) continue;
    }
    const double gi = a.grad_scale * (a.grad_rows ? a.grad_rows[i] : 1.0);
    const double alpha = (gi * total + z_loss_coef(a, i, lse)) * inv_s;
    if (cached) {
      scale_blocks<T, true, true>(exp_row.row(g), g, C, block_shift, shift, alpha, S(gi), q);
    } else {
      write_grad<T, true, true>(x, g, C, S(shift), S(alpha), S(gi), q);
    }
  }
  FX_FREE(q);
}

template <class T, bool kSmooth, bool kWeighted>
void ce_rows_any(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  constexpr int64_t kMaxClasses = kSmallRowClasses<compute_t<T>>;
  if constexpr (kMaxClasses > 0) {
    // Backward from lse has no per-row reductions to save, and the row path's plain
    // exp-scale-store beats the transposes from about 24 classes (65536 x 32, AVX-512, one
    // thread: 1.0 ms by rows, 1.26 ms a row per lane).
    const int64_t limit = mode == CeMode::backward ? kSmallClasses : kMaxClasses;
    if (a.classes <= limit) return ce_small_rows<T, kSmooth, kWeighted>(a, r0, r1, mode);
  }
  ce_rows<T, kSmooth, kWeighted>(a, r0, r1, mode);
}

template <class T>
void ce_uncapped_dispatch(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  const bool weighted = weight_of<compute_t<T>>(a) != nullptr;
  if (a.targets) {
    if (weighted) {
      ce_soft_rows<T, true>(a, r0, r1, mode);
    } else {
      ce_soft_rows<T, false>(a, r0, r1, mode);
    }
  } else if (a.smoothing == 0.0) {
    ce_rows_any<T, false, false>(a, r0, r1, mode);
  } else if (weighted) {
    ce_rows_any<T, true, true>(a, r0, r1, mode);
  } else {
    ce_rows_any<T, true, false>(a, r0, r1, mode);
  }
}

// Soft-capped logits: a chunk of rows at a time is capped into a scratch block of the compute
// type S (never rounded to 16 bits), the uncapped kernels run on that block, and the gradient is
// multiplied by d cap / d x = 1 - tanh^2 = (1 - t)(1 + t), t = capped / softcap, on the way out.
constexpr int64_t kCappedChunkBytes = 256 * 1024;

template <class S>
constexpr DType dtype_of() {
  return sizeof(S) == 8 ? DType::f64 : DType::f32;
}

template <class T>
void ce_capped_rows(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  using S = compute_t<T>;
  using size = decltype(sizeof(S));
  const int64_t C = a.classes;
  int64_t chunk = kCappedChunkBytes / (C * int64_t(sizeof(S)));
  chunk = chunk < 1 ? 1 : min64(chunk, r1 - r0);
  const bool grads = mode != CeMode::forward;
  S* capped = static_cast<S*>(FX_MALLOC(sizeof(S) * size(chunk * C)));
  // 16-bit rows: the gradient of the capped logits in S first, rounded once at the end.
  S* grad_s = kNarrow<T> && grads ? static_cast<S*>(FX_MALLOC(sizeof(S) * size(chunk * C))) : nullptr;
  if (capped == nullptr || (kNarrow<T> && grads && grad_s == nullptr)) {
    for (int64_t i = r0; i < r1 && mode != CeMode::backward; ++i) a.row_loss[i] = FX_NAN;
    FX_FREE(capped);
    FX_FREE(grad_s);
    return;
  }
  const S cap = S(a.softcap), inv_cap = S(1.0 / a.softcap);
  for (int64_t i0 = r0; i0 < r1; i0 += chunk) {
    const int64_t n = min64(chunk, r1 - i0);
    for (int64_t r = 0; r < n; ++r) {
      const T* x = static_cast<const T*>(a.logits) + (i0 + r) * a.logits_stride;
      S* z = capped + r * C;
      for_each_vector<S>(C, [&](auto v, int64_t j, int) {
        using VV = decltype(v);
        (vtanh(VV::load(x + j) * VV::set1(inv_cap)) * VV::set1(cap)).store(z + j);
      });
    }
    CeArgs b = a;
    b.dtype = dtype_of<S>();
    b.softcap = 0;
    b.rows = n;
    b.block_loss = nullptr;  // (rows counted from i0 here: not the driver's blocks)
    b.block_done = nullptr;
    b.logits = capped;
    b.logits_stride = C;
    if (a.labels) b.labels = a.labels + i0;
    if (a.targets) b.targets = static_cast<const S*>(a.targets) + i0 * a.targets_stride;
    if (a.grad_rows) b.grad_rows = a.grad_rows + i0;
    if (a.row_loss) b.row_loss = a.row_loss + i0;
    if (a.row_z) b.row_z = a.row_z + i0;
    if (a.correct) b.correct = a.correct + i0;
    b.lse = static_cast<S*>(a.lse) + i0;
    T* g0 = grads ? static_cast<T*>(a.grad) + i0 * a.grad_stride : nullptr;
    if (grads) {
      if constexpr (kNarrow<T>) {
        b.grad = grad_s;
        b.grad_stride = C;
      } else {
        b.grad = g0;
      }
    }
    ce_uncapped_dispatch<S>(b, 0, n, mode);
    if (!grads) continue;
    for (int64_t r = 0; r < n; ++r) {
      const S* z = capped + r * C;
      const S* from = kNarrow<T> ? grad_s + r * C : reinterpret_cast<const S*>(g0 + r * a.grad_stride);
      T* to = g0 + r * a.grad_stride;
      for_each_vector<S>(C, [&](auto v, int64_t j, int) {
        using VV = decltype(v);
        const VV t = VV::load(z + j) * VV::set1(inv_cap), one = VV::set1(S(1));
        (VV::load(from + j) * ((one - t) * (one + t))).store(to + j);
      });
    }
  }
  FX_FREE(capped);
  FX_FREE(grad_s);
}

template <class T>
void ce_rows_dispatch(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  if (a.softcap != 0.0) {
    ce_capped_rows<T>(a, r0, r1, mode);
  } else {
    ce_uncapped_dispatch<T>(a, r0, r1, mode);
  }
}


template <class T>
RowStats slice_stats_t(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, bool smoothing) {
  const T* x = static_cast<const T*>(a.logits) + row * a.logits_stride + c0;
  const auto* w = weight_of<compute_t<T>>(a);
  // 16-bit rows: the slice holding the label keeps its exp apart (RowStats::rest, ey).
  const int64_t y = a.labels[row];
  const int64_t skip = kNarrow<T> && y >= c0 && y < c1 ? y - c0 : -1;
  if (!smoothing) return online_stats<T, false, false, false>(x, c1 - c0, nullptr, nullptr, nullptr, skip);
  if (w) return online_stats<T, false, true, true>(x, c1 - c0, w + c0, nullptr, nullptr, skip);
  return online_stats<T, false, true, false>(x, c1 - c0, nullptr, nullptr, nullptr, skip);
}


// 16-bit rows: classes [c0, c1) but the label's, and the sum of their exp(z - shift).
template <class T, bool kSmooth, bool kWeighted>
double slice_grad_sum(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, compute_t<T> shift,
                      compute_t<T> alpha, compute_t<T> beta, const compute_t<T>* w) {
  const T* x = static_cast<const T*>(a.logits) + row * a.logits_stride;
  T* g = static_cast<T*>(a.grad) + row * a.grad_stride;
  const int64_t y = a.labels[row];
  const int64_t mid = y >= c0 && y < c1 ? y : c1;  // the label, or the end of the slice
  const int64_t after = mid < c1 ? mid + 1 : c1;
  return write_grad_sum<T, kSmooth, kWeighted>(x + c0, g + c0, mid - c0, shift, alpha, beta,
                                               kWeighted ? w + c0 : w) +
         write_grad_sum<T, kSmooth, kWeighted>(x + after, g + after, c1 - after, shift, alpha,
                                               beta, kWeighted ? w + after : w);
}

template <class T>
double slice_grad_t(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, double shift,
                    double alpha, double beta) {
  using S = compute_t<T>;
  const S* w = weight_of<S>(a);
  if constexpr (kNarrow<T>) {
    if (beta == 0.0) return slice_grad_sum<T, false, false>(a, row, c0, c1, S(shift), S(alpha), S(0), nullptr);
    if (w) return slice_grad_sum<T, true, true>(a, row, c0, c1, S(shift), S(alpha), S(beta), w);
    return slice_grad_sum<T, true, false>(a, row, c0, c1, S(shift), S(alpha), S(beta), nullptr);
  } else {
    const T* x = static_cast<const T*>(a.logits) + row * a.logits_stride + c0;
    T* g = static_cast<T*>(a.grad) + row * a.grad_stride + c0;
    if (beta == 0.0) {
      write_grad<T, false, false>(x, g, c1 - c0, S(shift), S(alpha), S(0), nullptr);
    } else if (w) {
      write_grad<T, true, true>(x, g, c1 - c0, S(shift), S(alpha), S(beta), w + c0);
    } else {
      write_grad<T, true, false>(x, g, c1 - c0, S(shift), S(alpha), S(beta), nullptr);
    }
    return 0.0;
  }
}


template <class T>
void rowop_rows_t(const RowsArgs& a, RowOp op, int64_t r0, int64_t r1) {
  using S = compute_t<T>;
  const int64_t C = a.classes;
  const bool want_cache = op == RowOp::softmax && row_fits_cache<T>(C);
  const ExpRow<T> exp_row(want_cache ? C : 0, false);
  const bool cached = want_cache && exp_row.ok();
  double block_shift[kMaxCachedBlocks];
  for (int64_t i = r0; i < r1; ++i) {
    const T* x = static_cast<const T*>(a.x) + i * a.x_stride;
    if (op == RowOp::logsumexp) {
      RowStats st = online_stats<T, false, false, false>(x, C, nullptr);
      static_cast<T*>(a.out)[i * a.out_stride] = narrow_from_double<T>(st.m + FX_LOG(st.s));
      continue;
    }
    T* out = static_cast<T*>(a.out) + i * a.out_stride;
    if (cached) {
      RowStats st = online_stats<T, true, false, false>(x, C, nullptr, exp_row.row(out), block_shift);
      scale_blocks<T, false, false>(exp_row.row(out), out, C, block_shift, st.m, 1.0 / st.s, S(0),
                                    nullptr);
      continue;
    }
    RowStats st = online_stats<T, false, false, false>(x, C, nullptr);
    if (op == RowOp::softmax) {
      write_grad<T, false, false>(x, out, C, S(st.m), S(1.0 / st.s), S(0), nullptr);
    } else {
      // log p_j = (z_j - m) - log s: subtracting the max first keeps huge logits exact.
      const S m = S(st.m), log_s = S(FX_LOG(st.s));
      for_each_vector<S>(C, [&](auto v, int64_t j, int) {
        using VV = decltype(v);
        ((VV::load(x + j) - VV::set1(m)) - VV::set1(log_s)).store(out + j);
      });
    }
  }
}

// The entry points. Each ISA compiles this body twice: its main file (isa_<name>.cpp) for float
// and double rows, and with FASTXENT_KERNELS_HALF defined (isa_<name>_half.cpp) for float16 and
// bfloat16 rows. Compilers budget inlining per translation unit, so keeping the 16-bit
// instantiations out of the main file leaves the float and double kernels compiled as before.
#if defined(FASTXENT_KERNELS_HALF)

// Calls f(T{}) with the 16-bit storage type of dtype d.
template <class F>
inline void with_half_type(DType d, F&& f) {
  if (d == DType::f16) {
    f(Half{});
  } else {
    f(BFloat16{});
  }
}

void ce_dispatch_half(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  with_half_type(a.dtype, [&](auto tag) { ce_rows_dispatch<decltype(tag)>(a, r0, r1, mode); });
}

RowStats slice_stats_half(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, bool smoothing) {
  RowStats st{};
  with_half_type(a.dtype, [&](auto tag) {
    st = slice_stats_t<decltype(tag)>(a, row, c0, c1, smoothing);
  });
  return st;
}

double slice_grad_half(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, double shift,
                       double alpha, double beta) {
  double rest = 0;
  with_half_type(a.dtype, [&](auto tag) {
    rest = slice_grad_t<decltype(tag)>(a, row, c0, c1, shift, alpha, beta);
  });
  return rest;
}

void rowop_rows_half(const RowsArgs& a, RowOp op, int64_t r0, int64_t r1) {
  with_half_type(a.dtype, [&](auto tag) { rowop_rows_t<decltype(tag)>(a, op, r0, r1); });
}

#else

// Defined in this ISA's 16-bit translation unit.
void ce_dispatch_half(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode);
RowStats slice_stats_half(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, bool smoothing);
double slice_grad_half(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, double shift,
                       double alpha, double beta);
void rowop_rows_half(const RowsArgs& a, RowOp op, int64_t r0, int64_t r1);

void ce_dispatch(const CeArgs& a, int64_t r0, int64_t r1, CeMode mode) {
  if (a.dtype == DType::f32) {
    ce_rows_dispatch<float>(a, r0, r1, mode);
  } else if (a.dtype == DType::f64) {
    ce_rows_dispatch<double>(a, r0, r1, mode);
  } else {
    ce_dispatch_half(a, r0, r1, mode);
  }
}

void forward_rows(const CeArgs& a, int64_t r0, int64_t r1) { ce_dispatch(a, r0, r1, CeMode::forward); }
void fused_rows(const CeArgs& a, int64_t r0, int64_t r1) { ce_dispatch(a, r0, r1, CeMode::fused); }
void backward_rows(const CeArgs& a, int64_t r0, int64_t r1) {
  ce_dispatch(a, r0, r1, CeMode::backward);
}

RowStats slice_stats(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, bool smoothing) {
  if (a.dtype == DType::f32) return slice_stats_t<float>(a, row, c0, c1, smoothing);
  if (a.dtype == DType::f64) return slice_stats_t<double>(a, row, c0, c1, smoothing);
  return slice_stats_half(a, row, c0, c1, smoothing);
}

double slice_grad(const CeArgs& a, int64_t row, int64_t c0, int64_t c1, double shift, double alpha,
                  double beta) {
  if (a.dtype == DType::f32) return slice_grad_t<float>(a, row, c0, c1, shift, alpha, beta);
  if (a.dtype == DType::f64) return slice_grad_t<double>(a, row, c0, c1, shift, alpha, beta);
  return slice_grad_half(a, row, c0, c1, shift, alpha, beta);
}

void rowop_rows(const RowsArgs& a, RowOp op, int64_t r0, int64_t r1) {
  if (a.dtype == DType::f32) {
    rowop_rows_t<float>(a, op, r0, r1);
  } else if (a.dtype == DType::f64) {
    rowop_rows_t<double>(a, op, r0, r1);
  } else {
    rowop_rows_half(a, op, r0, r1);
  }
}

#endif
