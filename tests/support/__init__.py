"""Test-only helpers, in one place: public-format savers, the shared tiny model set, test images and
odd files, the sample photos' faces, processes (titles, a Ray node's pids), a Ray head of a test's own
with job submission, faults (an S3 of a test's own, a full disk), import blocking."""
