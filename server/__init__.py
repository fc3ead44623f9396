"""The memlookup server: the store, the request handler and the socket loop."""
