"""What one command does, as a library call: ``maps``, ``compare``, ``inspect``."""
