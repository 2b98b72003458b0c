"""The technique study: its report (one table, a verdict per claim)."""
