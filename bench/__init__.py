"""keygate benchmarks: ``python bench/run.py`` (macro) and ``python bench/hotpath.py`` (micro).

Nothing here is imported by the gateway; see ``bench/README.md``.
"""
