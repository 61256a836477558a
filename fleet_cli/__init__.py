"""`edgefleet`: the operator's command line over the fleet API's HTTP API (`pip install 'edgefleet[cli]'`).

Two layers: `client.ApiClient` speaks HTTP and knows nothing of the terminal; `commands/` parse flags, call the
client and print (rich tables, or JSON with `--json`). It imports nothing of the server packages.
"""
