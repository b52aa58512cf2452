"""Errors a user can act on: the CLI prints them as one line, never as a traceback."""


class UserError(Exception):
    """Bad input or configuration, with a message that names the offending URI or option."""
