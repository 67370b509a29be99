"""Sweep configs for `python -m m3oe_jax.sweep`."""
