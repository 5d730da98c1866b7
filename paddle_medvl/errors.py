"""The one base class of the errors a user can act on from their message alone.

Every error that names a file, line, key or record (a bad config, bad data, a missing checkpoint, a
diverged run, an unsafe pickle) derives from :class:`MedVLError`; each tool catches
``USER_ERRORS`` and prints the message as one ``error:`` line with exit code 1, instead of a
traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class MedVLError(Exception):
    """An error whose message says what is wrong and where; no traceback needed."""


USER_ERRORS: tuple[type[BaseException], ...] = (MedVLError, FileNotFoundError)
