"""The model runtime: onnxruntime sessions (one factory), execution-provider plug-ins, the models a device
holds by name (ModelHost), golden checks, dynamic batching and the memory budget. Knows nothing of MQTT or HTTP."""
