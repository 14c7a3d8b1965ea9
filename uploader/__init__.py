"""Upload front: presigned S3 uploads and the synchronous recognition API."""
