"""Pure code: NLI math, request and result types, token buckets, caches.

No Ray, torch or HTTP here, so every rule is tested in milliseconds.
"""
