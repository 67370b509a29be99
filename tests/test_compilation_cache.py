"""JAX's persistent compilation cache in the workdir: a resumed run reads its
programs instead of compiling them again."""

import jax
import pytest

from m3oe_jax import run_context, train
from tests.helpers import tiny_train_config


@pytest.mark.slow
def test_a_resumed_run_reads_its_programs_from_the_workdirs_cache(tmp_path):
  before = (jax.config.jax_compilation_cache_dir,
            jax.config.jax_persistent_cache_min_compile_time_secs)
  first = run_context.Timings()
  train.train_and_evaluate(tiny_train_config(num_epochs=1), str(tmp_path), timings=first)
  entries = {p.name.split("-")[0] for p in (tmp_path / "compilation_cache").iterdir()}
  assert {"jit_multi_step", "jit_eval_step", "jit_update_step"} <= entries
  assert first.cache_hits == 0 and first.programs >= 3

  again = run_context.Timings()
  train.train_and_evaluate(tiny_train_config(num_epochs=2), str(tmp_path), timings=again)
  # The train, architecture and eval steps (and the state's initializer) come
  # from the cache; nothing new is compiled.
  assert again.cache_hits >= 3
  assert again.cache_hits == again.programs
  assert len(again.epochs) == 1 and again.first_call is not None
  assert (jax.config.jax_compilation_cache_dir,
          jax.config.jax_persistent_cache_min_compile_time_secs) == before
