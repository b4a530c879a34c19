"""The node process: the composition root that builds the grid, the drives, the object layer
and the peer table, and runs the services (grid, S3 gateway, admin API, healing) on one port.

Layers: ``cli -> node -> heal -> storage -> minigrid``. Nothing below ``node`` imports it.
"""
