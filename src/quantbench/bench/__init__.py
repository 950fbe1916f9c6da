"""The plugin side of a benchmark run: the case matrix (cases), the case runner (runner), the
one-model-at-a-time pool (pool), the correctness guard (guard) and measured device ceilings (peaks)."""
