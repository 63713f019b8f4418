// The label check of every call, included by kernel_body.h inside an ISA namespace so that each
// ISA's copy vectorises (the driver's baseline build would run it one label at a time).

// How many labels are not ignore_index; -1 when some label is neither that nor a class index
// in [0, classes) (the driver then finds it and names it). With out, the labels are also
// widened to int64 there (int32 labels, JAX's default).
template <class L>
inline int64_t check_labels_into(const L* labels, int64_t n, int64_t classes, int64_t ignore_index,
                                 int64_t* out) {
  // All-ones / zero masks and a count of ignored labels: each step is one vector instruction
  // (compare, or, and, add), where 0/1 flags cost two or three more per four labels.
  uint64_t all_ok = ~uint64_t(0);
  int64_t minus_ignored = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = labels[i];
    const uint64_t ignored = v == ignore_index ? ~uint64_t(0) : 0;
    const uint64_t inside = uint64_t(v) < uint64_t(classes) ? ~uint64_t(0) : 0;  // (negatives wrap high)
    all_ok &= inside | ignored;
    minus_ignored += int64_t(ignored);  // -1 per ignored label
    if (out) out[i] = v;
  }
  return all_ok == ~uint64_t(0) ? n + minus_ignored : -1;
}

// Has VecF its own scan of int64 labels (VecF::count_kept_labels, same answer)?
template <class V, class = void>
struct HasLabelScan : std::false_type {};
template <class V>
struct HasLabelScan<V, std::void_t<decltype(V::count_kept_labels(nullptr, 0, 0, 0))>> : std::true_type {};

template <class V>
inline int64_t scan_kept_labels(const int64_t* labels, int64_t n, int64_t classes, int64_t ignore_index) {
  if constexpr (HasLabelScan<V>::value) {
    return V::count_kept_labels(labels, n, classes, ignore_index);
  } else {
    return check_labels_into<int64_t>(labels, n, classes, ignore_index, nullptr);
  }
}

inline int64_t count_kept_labels(const int64_t* labels, int64_t n, int64_t classes, int64_t ignore_index) {
  return scan_kept_labels<VecF>(labels, n, classes, ignore_index);
}

inline int64_t widen_kept_labels(const int32_t* labels, int64_t n, int64_t classes, int64_t ignore_index,
                                 int64_t* out) {
  return check_labels_into<int32_t>(labels, n, classes, ignore_index, out);
}
