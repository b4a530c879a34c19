"""The ``minigrid`` command line."""
