// The label check of every call, included by kernel_body.h inside an ISA namespace so that each
// ISA's copy vectorises (the driver's baseline build would run it one label at a time).

// How many labels are not ignore_index; -1 when some label is neither that nor a class index
// in [0, classes) (the driver then finds it and names it).
inline int64_t count_kept_labels(const int64_t* labels, int64_t n, int64_t classes, int64_t ignore_index) {
  uint64_t bad = 0;
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t v = labels[i];
    const uint64_t not_ignored = v != ignore_index;
    bad |= uint64_t(uint64_t(v) >= uint64_t(classes)) & not_ignored;  // (negatives wrap high)
    kept += int64_t(not_ignored);
  }
  return bad ? -1 : kept;
}
