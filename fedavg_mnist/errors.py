"""The one exception type whose message is shown to the user as a single line."""


class UserError(Exception):
    """Bad input or environment: printed as one line, exit status 2."""
