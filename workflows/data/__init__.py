"""Data files shipped with the package (the screening set)."""
