"""Reading users' files: images and their presets (``inputs``), checkpoints (``checkpoints``)."""
