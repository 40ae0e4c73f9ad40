"""One exception type for input a user can fix; the CLI turns it into one line and exit code 2."""


class ReswiseError(Exception):
    """Bad input: the message names the problem and the fix, in one line."""
