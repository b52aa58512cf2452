"""Test-only helpers, in one place: public-format savers, the shared tiny model set, test images and
odd files, processes (Ray heads, titles), faults (an S3 of a test's own, a full disk), import blocking."""
