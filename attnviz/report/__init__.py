"""attnviz.report."""
