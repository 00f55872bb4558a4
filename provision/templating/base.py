"""What every part of templating shares: the ``omit`` placeholder, the never-templated string, the error."""
from __future__ import annotations


OMIT = "__omit_place_holder__gpufleet__"


class TemplateError(Exception):
    """A template failed to compile or render (undefined variable, bad filter argument...)."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)


class Unsafe(str):
    """A string that is never templated (YAML ``!unsafe``)."""
