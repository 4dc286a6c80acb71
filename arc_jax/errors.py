"""The one base class of errors that a user's input or settings cause."""


class UserError(Exception):
    """Bad input or settings (a file, a flag, a config field, the machine's memory): the command
    ends with one line `error: <message>` and exit status 1, never a traceback. Each subclass
    also keeps its builtin base (ValueError, MemoryError, RuntimeError) for library callers."""
