"""The failures a run reports in one line: bad input, and a run that cannot go on."""


class RunFailure(Exception):
    """A run ended for a reason its message says in one line; no traceback is shown."""


class UserError(RunFailure):
    """Bad input or environment: printed as one line, exit status 2."""


class ClientFailure(RunFailure):
    """A client failed, or the federation is not the one the run needs: exit status 1."""
