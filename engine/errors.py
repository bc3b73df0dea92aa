"""User-facing errors: bad input that the user can fix. The CLI prints these without a traceback."""


class UserError(ValueError):
    """Something the user passed cannot be used; the message names it and says what to do instead."""
