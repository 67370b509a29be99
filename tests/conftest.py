"""Test-session setup, read by pytest before any test module imports jax.

The suite compiles hundreds of small XLA programs, in this process and in the
trainers it starts (they inherit the environment), and on CPU most of each
compilation is LLVM optimising machine code that then runs for milliseconds.
Optimisation level 0 halves the suite's time. It changes how fast the programs
run, and at most the rounding of what they compute (another order of a sum):
every comparison in the suite is between programs compiled the same way, or
against stored values within a rounding tolerance. The suite passes at either
level.
Set M3OE_TEST_XLA_OPTIMIZE=1 to test with XLA's default optimisation instead.
"""

import os

if os.environ.get("M3OE_TEST_XLA_OPTIMIZE", "") in ("", "0"):
  os.environ["XLA_FLAGS"] = " ".join(
      [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0"]).strip()
