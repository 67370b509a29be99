"""`python -m m3oe_jax.report --workdir=DIR [--workdir=DIR2 ...] [--out=DIR]`."""

import sys

from m3oe_jax.report.report import main

if __name__ == "__main__":
  sys.exit(main())
