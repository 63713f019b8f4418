"""``python -m fastxent``: what was built, then a short benchmark.

Prints fastxent.info() and runs fastxent.bench on its --quick grid with the fused cpp kernel,
the NumPy reference, PyTorch eager and the fastxent.torch drop-in (when PyTorch is installed).
Any fastxent.bench flag is accepted and overrides these defaults, e.g.
``python -m fastxent --impls all --shapes 4096x32000``.
"""

from __future__ import annotations

import sys

from . import bench, info

# --quick grid; cpp vs numpy vs torch eager vs the fastxent.torch drop-in. The thread-scaling
# lines stay (quick shapes) since they show at a glance whether the threads help here.
DEFAULTS = ["--quick", "--impls", "cpp,numpy,torch,fastxent-torch"]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in argv):
        return bench.main(argv, prog="python -m fastxent")
    i = info()
    print(f"fastxent {i['version']}")
    print(f"  backends:  {', '.join(i['backends'])} (default {i['default_backend']})")
    print(f"  isa:       {i['isa']} in use; built for {', '.join(i['isas'])}")
    print(f"  threads:   {i['num_threads']}")
    print()
    # Later flags win in argparse, so the caller's flags override the defaults.
    return bench.main(DEFAULTS + argv, prog="python -m fastxent", show_info=False)


if __name__ == "__main__":
    sys.exit(main())
