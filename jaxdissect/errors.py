"""The one exception type for bad user input.

Command-line entry points catch `UserError` and print its message as a single
line with a non-zero exit, without a traceback. Library code raises it for
anything a user can fix (a missing file, a wrong key, a bad flag value).
"""


class UserError(Exception):
    """A problem with the user's input, stated in one line."""
