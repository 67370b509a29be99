"""M3oE multi-domain multi-task mixture-of-experts ranking, in JAX/Flax."""

__version__ = "0.1.0"
