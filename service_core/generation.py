"""How a generator makes a random string."""

from __future__ import annotations

import random
import secrets
import string

ALPHABET = string.ascii_letters + string.digits

# One generator per process, seeded with 128 bits from the operating system: two
# generator instances started in the same instant draw independent sequences, so a
# value given to two ids would be a real duplicate, never an artefact of seeding.
# `secrets.choice` per character would cost about 3 us each, a real share of a
# generator's CPU at 64 characters a string; one `choices` call costs a tenth of it.
_rng = random.Random(secrets.randbits(128))


def random_string(length: int) -> str:
    """A string of `length` characters drawn uniformly from letters and digits."""
    return "".join(_rng.choices(ALPHABET, k=length))
