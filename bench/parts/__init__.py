"""The parts of bench/run.py, one module each: recipes (the table), padding, cache, profile (efficiency)."""
