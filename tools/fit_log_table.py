"""The table behind the kernels' vectorised float log on ISAs with a 32-entry lane permute
(cpp/vlog.h): m in [1, 2) is split by its top 5 mantissa bits into m in [c_i, c_i + 1/32),
c_i = 1 + i/32, and log(m) = -log(R_i) + log1p(m R_i - 1) with R_i = 1/c_i rounded to float
and the table entry -log(R_i) computed from that rounded R_i (so the rounding of R_i costs
nothing). r = m R_i - 1 lies in [0, 1/32]: log1p's Taylor series to degree 5 is within
r^5 / 6 relative (< 6e-9). ISAs with an 8-entry lane permute (AVX2) take the same table of
8 entries (top 3 bits), r in [0, 1/8], and the series to degree 8 (1.2 ulp in all). Run it to
print the tables as C++ hex floats.

The double tables (ISAs with a 16-entry permute of doubles): m in [0.75, 1.5), k = round(16 m)
in 12 .. 24, stored at k mod 16 (distinct; 9-11 unused), R_k = 16 / k rounded to double and
-log(R_k) of that rounded R_k from 60-digit decimal arithmetic. r = m R_k - 1 lies in
[-1/26, 1/24]: the Taylor series to degree 12 is within r^12 / 13 relative (< 2.1e-18).
"""
from decimal import Decimal, getcontext

import numpy as np


def tables(entries=32):
    centers = 1.0 + np.arange(entries) / float(entries)
    inv = (1.0 / centers).astype(np.float32)
    neg_log = (0.0 - np.log(inv.astype(np.float64))).astype(np.float32)  # +0.0 at i = 0
    return inv, neg_log


def double_tables():
    getcontext().prec = 60
    inv = [1.0] * 16
    neg_log = [0.0] * 16
    for k in range(12, 25):
        inv[k % 16] = 16.0 / k
        neg_log[k % 16] = float(-Decimal(inv[k % 16]).ln())
    return inv, neg_log


def hex_float(v, suffix="f"):
    mantissa, exponent = float(v).hex().split("p")
    return mantissa.rstrip("0").rstrip(".") + "p" + exponent + suffix


def cpp_array(name, values, ctype="float"):
    body = ", ".join(hex_float(v, "f" if ctype == "float" else "") for v in values)
    return f"constexpr {ctype} {name}[{len(values)}] = {{{body}}};"


if __name__ == "__main__":
    inv, neg_log = tables()
    print(cpp_array("kLogTableInv", inv))
    print(cpp_array("kLogTableNegLog", neg_log))
    inv, neg_log = tables(8)
    print(cpp_array("kLogTable8Inv", inv))
    print(cpp_array("kLogTable8NegLog", neg_log))
    inv, neg_log = double_tables()
    print(cpp_array("kLogTable16Inv", inv, "double"))
    print(cpp_array("kLogTable16NegLog", neg_log, "double"))
