"""Camera pipelines: sources → newest-frame queue → detector (preprocess, infer, a post-processing plug-in per
task) → later stages on the crops → events and an annotated local view. `manager.CameraManager` runs the
desired state's cameras, taking their models by name from the agent's ModelHost. The core (sources, capture,
frames, pipeline, stages, postprocess, events, manager, model) imports neither FastAPI nor paho; `view`,
`metrics` and `cli` are the shells around it."""
