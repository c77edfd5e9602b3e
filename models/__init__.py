"""Scripts that build the reference and shipped models, the test and coverage zoos, and their data."""
