"""How a generator makes a random string."""

from __future__ import annotations

import secrets
import string

ALPHABET = string.ascii_letters + string.digits


def random_string(length: int) -> str:
    """A string of `length` characters drawn uniformly from letters and digits.

    `secrets` rather than `random`: two generator instances started in the same second
    must not produce the same sequence, or the harness would report duplicates that
    are an artefact of seeding.
    """
    return "".join(secrets.choice(ALPHABET) for _ in range(length))
