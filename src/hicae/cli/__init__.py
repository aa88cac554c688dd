"""Command-line entry points (thin: parsing and I/O; the work lives in the library)."""
