"""The one exception type a user ever sees: the CLI prints its message on one line and exits 2."""


class KvsimError(ValueError):
    """Bad input: an unknown preset, an invalid size or policy parameter, a malformed file."""


class UsageError(KvsimError):
    """A command line that cannot be read (unknown flag, malformed list or range)."""
