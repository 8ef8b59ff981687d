"""One training engine for the three stages."""
