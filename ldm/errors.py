"""The one exception type for mistakes a user can fix (bad names, missing files, bad values)."""


class UserError(ValueError):
    """A problem with the user's input; its message names the problem and the fix.

    The CLI prints these as one line, without a traceback.
    """
