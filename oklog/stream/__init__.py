"""Live tail: records as the stores write them (``/store/stream``, ``oklog stream``).

``wire`` is the stream body's grammar (records and ``#`` notice lines),
``queue`` the bounded per-client queue that drops the oldest records,
``dedup`` the de-duplication window, ``hub`` the store's write-path tap,
``params`` the request parameters, ``fanout`` the cluster stream that
follows membership, ``api`` the HTTP routes.
"""
