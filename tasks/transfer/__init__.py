"""Transfer learning: the source model fetched and checked, the transfer report."""
