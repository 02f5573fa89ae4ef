"""Masks from scores, physical compaction, and the baseline scorers."""
