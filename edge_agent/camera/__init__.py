"""The camera pipeline: sources → newest-frame queue → detector (preprocess, infer, post-processing plug-in) →
events and an annotated local view. The core (sources, capture, pipeline, detectors, service) imports neither
FastAPI nor paho; `view`, `agent_hook` and `cli` are the shells around it."""
