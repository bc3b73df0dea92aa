"""Phone sets: every TTS engine's phones mapped to ARPAbet, the one set the corpus targets speak.

ARPAbet here is CMUdict's 39 phones without stress digits, plus SIL for pauses. Festival and flite
use the "radio" set (ARPAbet-like, lower case, with ax, dx, pau ...); espeak-ng and piper speak IPA,
which is tokenized greedily so that diphthongs and long vowels written as two symbols ("oʊ", "ɑː")
become one phone.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

VOWELS = frozenset("AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split())
CONSONANTS = frozenset("B CH D DH F G HH JH K L M N NG P R S SH T TH V W Y Z ZH".split())
SIL = "SIL"
ARPABET = VOWELS | CONSONANTS | {SIL}


@dataclass(frozen=True)
class Phone:
    start_s: float
    end_s: float
    arpabet: str  # one of ARPABET

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


class UnknownPhoneError(ValueError):
    """An engine produced a phone symbol this module cannot map to ARPAbet."""


# Festival/flite "radio" phones that are not plain lower-case ARPAbet.
_RADIO_EXTRA = {
    "ax": "AH", "axr": "ER", "dx": "D", "el": "L", "em": "M", "en": "N", "nx": "N", "hv": "HH",
    "pau": SIL, "h#": SIL, "brth": SIL, "sil": SIL,
}


def from_radio(name: str, engine: str) -> str:
    """One festival/flite phone name -> ARPAbet."""
    if name in _RADIO_EXTRA:
        return _RADIO_EXTRA[name]
    if name.upper() in ARPABET and name.islower():
        return name.upper()
    raise UnknownPhoneError(
        f"{engine} produced phone {name!r}, which has no ARPAbet mapping; add it to _RADIO_EXTRA in {__name__}"
    )


def from_ends(ends: Sequence[tuple[str, float]], engine: str) -> list[Phone]:
    """(radio name, end time) pairs, as festival's segs and flite's -psdur give them -> contiguous phones from 0."""
    phones, start = [], 0.0
    for name, end in ends:
        phones.append(Phone(start, end, from_radio(name, engine)))
        start = end
    return phones


# IPA (as espeak-ng writes it for English) -> ARPAbet; the longest match wins.
_IPA = {
    "ɑː": "AA", "ɑ": "AA", "ɒ": "AA", "æ": "AE", "a": "AE", "ʌ": "AH", "ə": "AH", "ɐ": "AH",
    "ɔː": "AO", "ɔ": "AO", "aʊ": "AW", "aɪ": "AY", "ɛ": "EH", "e": "EH", "ɜː": "ER", "ɜ": "ER",
    "ɚ": "ER", "ɝ": "ER", "eɪ": "EY", "ɪ": "IH", "ᵻ": "IH", "iː": "IY", "i": "IY", "oʊ": "OW",
    "əʊ": "OW", "o": "OW", "ɔɪ": "OY", "ʊ": "UH", "uː": "UW", "u": "UW",
    "b": "B", "tʃ": "CH", "ʧ": "CH", "d": "D", "ð": "DH", "f": "F", "ɡ": "G", "g": "G", "h": "HH",
    "dʒ": "JH", "ʤ": "JH", "k": "K", "x": "K", "l": "L", "ɫ": "L", "ɬ": "L", "m": "M", "n": "N",
    "ŋ": "NG", "p": "P", "ɹ": "R", "r": "R", "s": "S", "ʃ": "SH", "t": "T", "ʔ": "T", "ɾ": "D",
    "θ": "TH", "v": "V", "w": "W", "ʍ": "W", "j": "Y", "z": "Z", "ʒ": "ZH", "ç": "HH",
    # Other accents' vowels and consonants (espeak's Scottish, Caribbean ... English voices).
    "ʉ": "UW", "ʉː": "UW", "y": "UW", "ɯ": "UW", "ʏ": "UH", "ɵ": "OW", "ø": "OW", "ɨ": "IH", "ɘ": "AH",
    "ɤ": "AH", "œ": "EH", "ɞ": "ER", "ɶ": "AA", "ɣ": "G", "β": "V", "ɸ": "F", "ʁ": "R", "ɻ": "R", "ɽ": "D",
    "ɲ": "N", "ɱ": "M", "ʎ": "L", "ʋ": "V", "ɦ": "HH", "c": "K", "ɟ": "G", "q": "K", "ɕ": "SH", "ʑ": "ZH",
    # Pauses: piper's sentence start/end tokens and punctuation, espeak's pause events (passed as "_").
    "^": SIL, "$": SIL, "_": SIL, ",": SIL, ".": SIL, "!": SIL, "?": SIL, ";": SIL, ":": SIL,
    "—": SIL, "…": SIL,
}
_IPA_LONGEST = max(map(len, _IPA))
# Symbols that are not phones. Stress marks, word gaps and ties precede what they belong to, so their
# time goes to the next phone (after a pause, to the pause: piper's word gap after a comma is silence).
# Modifier letters and combining marks (length ː, palatalized ʲ, syllabic n̩ ...) extend the phone before.
_GIVE_NEXT = frozenset("ˈˌ -‿͡'\"")


def _is_mark(c: str) -> bool:
    return unicodedata.category(c) in ("Lm", "Mn", "Sk")


def from_ipa(segments: Sequence[tuple[str, float, float]], engine: str) -> list[Phone]:
    """Timed IPA strings (symbol, start, end) -> ARPAbet phones.

    A segment may hold several symbols (espeak's "ɛɹ") and one phone may span several segments
    (piper's "o", "ʊ"): each segment's span is shared equally among its symbols, then matched greedily.
    """
    chars = []
    for text, start, end in segments:
        step = (end - start) / max(len(text), 1)
        chars += [(c, start + i * step, start + (i + 1) * step) for i, c in enumerate(text)]
    phones: list[Phone] = []
    pending = None  # start of time handed forward by non-phone symbols
    i = 0
    while i < len(chars):
        for n in range(min(_IPA_LONGEST, len(chars) - i), 0, -1):
            symbol = "".join(c for c, _, _ in chars[i : i + n])
            if symbol in _IPA:
                start = chars[i][1] if pending is None else pending
                phones.append(Phone(start, chars[i + n - 1][2], _IPA[symbol]))
                pending, i = None, i + n
                break
        else:
            c, start, end = chars[i]
            if c not in _GIVE_NEXT and not _is_mark(c):
                raise UnknownPhoneError(
                    f"{engine} produced IPA symbol {c!r} (U+{ord(c):04X}), which has no ARPAbet mapping; "
                    f"add it to _IPA in {__name__}"
                )
            if phones and (phones[-1].arpabet == SIL or c not in _GIVE_NEXT):
                phones[-1] = Phone(phones[-1].start_s, end, phones[-1].arpabet)
            else:
                pending = start if pending is None else pending
            i += 1
    if pending is not None and phones:  # trailing non-phone symbols: the last phone keeps their time
        phones[-1] = Phone(phones[-1].start_s, chars[-1][2], phones[-1].arpabet)
    return phones


def tidy(phones: Sequence[Phone], duration_s: float) -> tuple[Phone, ...]:
    """Clip to the audio, drop empty phones, merge neighbouring pauses, and start at 0 (a gap before
    the first phone, as espeak leaves, is a pause)."""
    out: list[Phone] = []
    for p in [Phone(0.0, phones[0].start_s, SIL), *phones] if phones else []:
        p = Phone(min(p.start_s, duration_s), min(p.end_s, duration_s), p.arpabet)
        if p.end_s <= p.start_s:
            continue
        if out and p.arpabet == SIL and out[-1].arpabet == SIL:
            out[-1] = Phone(out[-1].start_s, p.end_s, SIL)
        else:
            out.append(p)
    return tuple(out)
