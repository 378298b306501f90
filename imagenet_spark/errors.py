"""One base class for every error a user can act on, so entry points print one clear line, not a traceback."""


class ImagenetSparkError(Exception):
    """Bad input, bad configuration, or a job that cannot finish as asked; the message says how to fix it."""
