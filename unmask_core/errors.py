"""Errors a user can act on, and faults of the world: the CLI prints either as one line, never as a
traceback."""


class UserError(Exception):
    """Bad input or configuration, with a message that names the offending URI or option."""


class TransientError(Exception):
    """The world failed, not the input: storage unreachable or throttled, a timeout, a full disk, a write
    that did not land. Retried where it happens; never an input's final answer (its shard stays
    uncommitted, so a rerun after recovery does it). The message names the endpoint or path."""
