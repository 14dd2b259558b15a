"""The bottom floor: errors, running a user's model, files, worker processes, lazy exports.

Nothing here imports the rest of attnviz.
"""
