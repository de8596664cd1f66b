"""Data every machine already has (scikit-learn's digits, the Python standard library's sources),
prepared identically on every rank for the examples. Framework-free: numpy only."""
