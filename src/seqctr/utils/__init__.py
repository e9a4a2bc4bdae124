"""Small shared helpers: atomic file and folder writes, strict JSON, provenance (io); progress for terminals and logs (progress); glibc keeping freed memory for large per-step tensors (malloc)."""
