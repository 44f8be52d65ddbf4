"""Sans-IO protocol code: HTTP/1.1, HTTP/2, HPACK, WebSocket, the tunnel RPC."""

DataPiece = bytes | memoryview
"""Body bytes as they travel: a `bytes`, or a view of a buffer a read filled (a large h2 DATA
payload, a large socket read), passed on without a copy and never written to again."""
