import pytest

from train.synth.phones import SIL, Phone, UnknownPhoneError, from_ends, from_ipa, from_radio, tidy


def _names(phones):
    return [p.arpabet for p in phones]


def test_radio_names_map_to_arpabet():
    names = [from_radio(n, "festival") for n in ("pau", "hh", "ax", "dx", "aa", "ng")]
    assert names == [SIL, "HH", "AH", "D", "AA", "NG"]
    with pytest.raises(UnknownPhoneError, match="'qq'.*_RADIO_EXTRA"):
        from_radio("qq", "flite")


def test_ends_become_contiguous_phones():
    phones = from_ends([("pau", 0.2), ("p", 0.3), ("aa", 0.5)], "flite")
    assert phones == [Phone(0.0, 0.2, SIL), Phone(0.2, 0.3, "P"), Phone(0.3, 0.5, "AA")]


def test_ipa_merges_two_symbol_diphthongs_and_splits_two_phone_segments():
    piper_like = [("h", 0.0, 0.1), ("ˈ", 0.1, 0.15), ("o", 0.15, 0.25), ("ʊ", 0.25, 0.3)]
    phones = from_ipa(piper_like, "piper")
    assert _names(phones) == ["HH", "OW"]
    assert phones[1].start_s == pytest.approx(0.1)  # the stress mark's time goes to the vowel it marks
    assert phones[1].end_s == pytest.approx(0.3)
    espeak_like = [("ð", 0.0, 0.1), ("ɛɹ", 0.1, 0.3), ("_", 0.3, 0.5)]
    phones = from_ipa(espeak_like, "espeak")
    assert _names(phones) == ["DH", "EH", "R", SIL]
    assert phones[1].end_s == pytest.approx(0.2)


def test_ipa_marks_extend_their_phone_and_gaps_after_pauses_stay_silent():
    phones = from_ipa([("ɑ", 0.0, 0.1), ("ː", 0.1, 0.2), (",", 0.2, 0.3), (" ", 0.3, 0.5), ("n", 0.5, 0.6)], "piper")
    assert phones == [Phone(0.0, 0.2, "AA"), Phone(0.2, 0.5, SIL), Phone(0.5, 0.6, "N")]


def test_unknown_ipa_names_the_symbol():
    with pytest.raises(UnknownPhoneError, match="U\\+2603"):
        from_ipa([("☃", 0.0, 0.1)], "espeak")


def test_tidy_clips_drops_empty_merges_pauses_and_starts_at_zero():
    phones = [Phone(0, 0.1, SIL), Phone(0.1, 0.2, SIL), Phone(0.2, 0.2, "P"), Phone(0.2, 0.6, "AA")]
    assert tidy(phones, 0.5) == (Phone(0, 0.2, SIL), Phone(0.2, 0.5, "AA"))
    assert tidy([Phone(0.05, 0.2, "P")], 0.3) == (Phone(0, 0.05, SIL), Phone(0.05, 0.2, "P"))
