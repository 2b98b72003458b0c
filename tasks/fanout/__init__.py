"""Fan-out and evidence: one nested run per tuning trial or comparison variant, the comparison's report."""
