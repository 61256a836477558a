"""Captured samples (issue 14): stored with their provisional labels, listed, and exported as a dataset."""
