"""Small shared helpers: atomic file and folder writes, strict JSON, provenance (io); progress for terminals and logs (progress)."""
