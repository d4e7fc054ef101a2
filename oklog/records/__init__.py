"""Everything about records as bytes: their format, finding them by ULID in
a sorted buffer, and merging sorted streams of them.  Pure: no IO, no trio;
the store and the query layers both build on it."""
