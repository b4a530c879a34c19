"""Storage engine: drives, erasure coding and the quorum object layer.

Start with :class:`storage.local.LocalDrive` (a drive that is a directory) and
:class:`storage.objects.ObjectLayer` (buckets and objects over erasure sets of drives). The
:class:`storage.drive.Drive` protocol is what a remote drive implements.
"""
