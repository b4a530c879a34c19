"""A path-style S3 gateway with AWS Signature V4, over the object layer.

Use :class:`S3Gateway`: ``S3Gateway(layer, {"access key": "secret key"}).add_routes(app)``.
"""

from node.s3.errors import S3Error
from node.s3.gateway import S3Gateway

__all__ = ["S3Error", "S3Gateway"]
