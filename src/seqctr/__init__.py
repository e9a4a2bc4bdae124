"""seqctr: length-aware CTR prediction from user behaviour sequences."""
__version__ = "0.1.0"
