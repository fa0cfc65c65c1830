"""Prometheus metrics (docs/reference.md#metrics): counted per process in plain
integers (:mod:`.counts`), published when scraped (:mod:`.exposition`), across
worker processes through prometheus-client's multiprocess files."""
