"""Varied English sentences for the TTS engines, made here from our own word lists and templates.

    rng = np.random.default_rng(0)
    sentence(rng)        # "The quiet painter carried seven boxes across the bridge."
    passage(rng, 3)      # three sentences joined into one utterance

No downloaded text: the words below cover the common phone contexts (bilabials, rounded and
spread vowels, fricatives, clusters) so every viseme is seen in many neighbours.
"""

from __future__ import annotations

import numpy as np

SUBJECTS = (
    "the quiet painter", "my brother", "a tired doctor", "the old fisherman", "our neighbour", "the young pilot",
    "a curious child", "the baker", "her teacher", "the small boy", "a busy mother", "the farmer", "his friend",
    "the lawyer", "a nervous student", "the captain", "my cousin", "the shy musician", "a proud father", "she",
    "he", "we", "they", "you", "nobody", "everyone", "the wizard", "a police officer", "the mayor", "the nurse",
)
VERBS = (
    "carried", "painted", "found", "bought", "moved", "pushed", "borrowed", "fixed", "watched", "opened",
    "cleaned", "measured", "threw", "chose", "described", "dropped", "lifted", "shared", "forgot", "repaired",
    "sold", "wrapped", "counted", "hid", "noticed", "packed", "washed", "brought", "ordered", "ignored",
)
ADJECTIVES = (
    "blue", "heavy", "broken", "shiny", "wooden", "purple", "smooth", "tiny", "enormous", "yellow", "soft",
    "famous", "cheap", "fresh", "strange", "beautiful", "rough", "modern", "ancient", "thick", "warm", "cold",
)
NOUNS = (
    "boxes", "bottles", "chairs", "books", "apples", "windows", "shoes", "pictures", "maps", "boats", "rooms",
    "wheels", "letters", "baskets", "mirrors", "pumpkins", "violins", "umbrellas", "jackets", "toys", "cups",
    "bridges", "fences", "ropes", "puzzles", "feathers", "coins", "engines", "blankets", "rubber boots",
)
PLACES = (
    "across the bridge", "into the garden", "behind the school", "over the mountain", "under the table",
    "near the river", "through the forest", "beside the window", "along the beach", "outside the museum",
    "down the valley", "around the village", "on the roof", "at the airport", "in the kitchen",
)
TIMES = (
    "yesterday", "this morning", "last summer", "every Monday", "before lunch", "after the storm", "at midnight",
    "on Friday", "in the evening", "twice a week", "a long time ago", "tomorrow", "right now", "all night",
)
NUMBERS = ("two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "twelve", "twenty", "fifty")
OPENERS = ("Well,", "Actually,", "Oh,", "Look,", "So,", "By the way,", "Honestly,", "Wow,", "Listen,")
QUESTIONS = ("why", "how", "when", "where")

_TEMPLATES = (
    "{S} {V} {N} {A} {N2} {P}.",
    "{S} {V} the {A} {N2} {T}.",
    "{T}, {s} {V} {N} {A} {N2} {P}.",
    "{O} {s} {V} the {N2} {P} {T}.",
    "{Q} did {s} leave the {A} {N2} {P}?",
    "Do you think {s} {V} the {A} {N2}?",
    "I never said that {s} {V} {N} {N2}.",
    "{S} {V} the {N2}, but {s2} {V2} the {A} {N3}.",
    "If {s} {V} the {N2} {T}, we will be fine.",
    "Please put the {A} {N2} {P} before {T2}.",
    "There were {N} {A} {N2} {P}, and nobody {V} them.",
    "{S} {V} the {N2}!",
    "Is it true that {s} {V} {N} {A} {N2}?",
)


def _pick(rng: np.random.Generator, words: tuple[str, ...]) -> str:
    return words[int(rng.integers(len(words)))]


def sentence(rng: np.random.Generator) -> str:
    """One sentence from a random template with random words."""
    subject = _pick(rng, SUBJECTS)
    words = {
        "S": subject[0].upper() + subject[1:], "s": subject, "s2": _pick(rng, SUBJECTS),
        "V": _pick(rng, VERBS), "V2": _pick(rng, VERBS), "A": _pick(rng, ADJECTIVES),
        "N": _pick(rng, NUMBERS), "N2": _pick(rng, NOUNS), "N3": _pick(rng, NOUNS),
        "P": _pick(rng, PLACES), "T": _pick(rng, TIMES), "T2": _pick(rng, TIMES),
        "O": _pick(rng, OPENERS), "Q": _pick(rng, QUESTIONS).capitalize(),
    }
    text = _pick(rng, _TEMPLATES).format(**words)
    return text[0].upper() + text[1:]


def passage(rng: np.random.Generator, sentences: int) -> str:
    """`sentences` sentences joined with spaces: one utterance with pauses between sentences."""
    if sentences < 1:
        raise ValueError(f"a passage needs at least one sentence; got {sentences}")
    return " ".join(sentence(rng) for _ in range(sentences))
