"""One exception type for mistakes a user can fix.

The command-line entry points catch `LqError` and print its message without a traceback, so
every message must say what was wrong (the key, value or file) and what would be right.
"""


class LqError(Exception):
    """A user-facing error: bad parameters, unreadable input, incompatible checkpoints."""
