"""Experiment configs: `get_config(arg)` per file, loaded by path with --config."""
