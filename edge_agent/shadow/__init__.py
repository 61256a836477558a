"""Shadow evaluation: a candidate model sees a sample of the live inputs off the request path and is compared."""
