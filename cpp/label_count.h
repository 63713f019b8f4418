// The label check of every call, included by kernel_body.h inside an ISA namespace so that each
// ISA's copy vectorises (the driver's baseline build would run it one label at a time).

// How many labels are not ignore_index; -1 when some label is neither that nor a class index
// in [0, classes) (the driver then finds it and names it). With out, the labels are also
// widened to int64 there (int32 labels, JAX's default).
template <class L>
inline int64_t check_labels_into(const L* labels, int64_t n, int64_t classes, int64_t ignore_index,
                                 int64_t* out) {
  uint64_t bad = 0;
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = labels[i];
    const uint64_t not_ignored = v != ignore_index;
    bad |= uint64_t(uint64_t(v) >= uint64_t(classes)) & not_ignored;  // (negatives wrap high)
    kept += int64_t(not_ignored);
    if (out) out[i] = v;
  }
  return bad ? -1 : kept;
}

inline int64_t count_kept_labels(const int64_t* labels, int64_t n, int64_t classes, int64_t ignore_index) {
  return check_labels_into<int64_t>(labels, n, classes, ignore_index, nullptr);
}

inline int64_t widen_kept_labels(const int32_t* labels, int64_t n, int64_t classes, int64_t ignore_index,
                                 int64_t* out) {
  return check_labels_into<int32_t>(labels, n, classes, ignore_index, out);
}
