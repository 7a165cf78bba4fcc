"""The one error type for bad user input: a field path and what is wrong with it.

The CLI turns it into exit code 2 and one line; the API into a 4xx JSON body. Raising it anywhere
below (spec parsing, dataset checks) keeps the message the user sees the same on every surface.
"""

from __future__ import annotations


class SpecError(ValueError):
    """Bad input the user can fix, located by a dotted field path.

    Example::

        >>> err = SpecError("dataset.label", "column 'click' not found; columns are: label, C1")
        >>> str(err)
        "dataset.label: column 'click' not found; columns are: label, C1"
        >>> err.to_dict()["field"]
        'dataset.label'
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)

    def to_dict(self) -> dict[str, str]:
        """The JSON body of an HTTP 4xx answer."""
        return {"field": self.field, "message": self.message}
