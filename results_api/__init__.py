"""Results API: the result of an image by its ID or its object key."""
