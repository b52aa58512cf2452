"""Test-only helpers: public-format savers, synthetic pairs and the shared tiny model set."""
