"""
The proxy mode: one backend connection per client.
"""
