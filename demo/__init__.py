"""The local demo and the processes it starts; the end-to-end tests drive the same pieces."""
