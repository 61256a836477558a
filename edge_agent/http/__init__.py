"""The local HTTP shell: KServe v2 inference for every model the device serves, health, metrics, admin."""
