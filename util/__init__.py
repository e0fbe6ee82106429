"""Utilities: data loading, feature cache, metrics, scores, safe file writes."""
