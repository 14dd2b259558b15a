"""attnviz's command-line front end (installed as ``attnviz.cli``)."""
