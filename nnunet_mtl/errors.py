"""One exception type for every error a user can fix.

Commands catch :class:`NnunetMtlError`, print its message as one line and exit non-zero; anything else is a bug
and keeps its traceback. Messages name the file or value and say what was expected.
"""


class NnunetMtlError(Exception):
    """A user-facing error: bad input, missing file, wrong setting."""


class ContractError(NnunetMtlError):
    """The raw dataset (dataset.json / cases.csv / image files) does not follow the nnunet_mtl contract."""
