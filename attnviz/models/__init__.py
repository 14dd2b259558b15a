"""attnviz.models."""
