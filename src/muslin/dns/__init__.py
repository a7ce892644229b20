"""DNS for Muslin's networks: the name table (records.py) and the wire format (wire.py),
pure; the server muslind runs (server.py, upstream.py, handover.py)."""
