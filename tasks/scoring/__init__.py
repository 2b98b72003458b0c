"""Batch scoring: the plan checked before it starts, the scoring task."""
