"""The one exception type for user-facing problems."""


class KdcError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do.

    The CLI prints it as one red line and exits with code 1, without a traceback.
    """
