"""Reports of a sweep: `python -m m3oe_jax.report --workdir=DIR [--workdir=DIR2 ...] [--out=DIR]`.

collect (which runs exist and their status), paper (the paper's Table 2 as data),
tables (the Table 2 layout, Markdown/CSV/LaTeX, Welch's t-test), plots (PNGs);
`report.write_report` puts them together.
"""
