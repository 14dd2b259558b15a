"""attnviz.render."""
