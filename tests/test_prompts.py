"""Prompt building: tokenizer layout, clone/edit prompts, option lists, sanitising and validation."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from errors import TextInputError
from models.audio_tokens import AUDIO_ID_OFFSET, token_str
from models.edit_tasks import EDIT_TASKS, LANGUAGE_TAGS, PARALINGUISTIC_TAGS_2025
from models.prompts import (
    BOS_ID,
    BOT_ID,
    CLONE_SYSTEM_PROMPT_TEMPLATE,
    EDIT_SYSTEM_PROMPT,
    EOT_ID,
    TURN_IDS,
    StepTextTokenizer,
    build_clone_prompt,
    build_edit_prompt,
    edit_instruction,
)
from models.text_input import (
    DEFAULT_MAX_TEXT_CHARS,
    clean_text,
    sanitize_text,
    split_language_tag,
    validate_audio_token_str,
    validate_text,
)
from text_split import split_text

AUDIO = token_str([5, 900, 1024, 3000, 5119, 0, 1, 2000, 2001, 2002])


@pytest.fixture(scope="module")
def tok(demo_llm_root):
    return StepTextTokenizer(demo_llm_root / "Step-Audio-EditX" / "tokenizer.model")


def split_turns(ids: list[int]) -> list[list[int]]:
    """[1] then turns opened by 4 and closed by 3 -> the id lists inside each turn (last one open)."""
    assert ids[0] == BOS_ID and ids[1] == BOT_ID
    turns, current = [], []
    for i in ids[2:]:
        if i == BOT_ID:
            continue
        if i == EOT_ID:
            turns.append(current)
            current = []
        else:
            current.append(i)
    turns.append(current)
    return turns


def test_demo_tokenizer_has_the_real_special_layout(tok):
    pieces = [tok.sp.id_to_piece(i) for i in range(5)]
    assert pieces == ["<unk>", "<s>", "</s>", "<|EOT|>", "<|BOT|>"]
    assert tok.sp.piece_to_id("<0x0A>") == 78
    assert tok.encode_text("\n")[-1] == 78
    assert all(tok.sp.is_control(i) for i in range(1, 68))


def test_audio_tokens_map_to_65536_plus_n(tok):
    ids = tok.encode("ab<audio_5>cd<audio_1024><audio_0>")
    assert ids == tok.encode_text("ab") + [AUDIO_ID_OFFSET + 5] + tok.encode_text("cd") + [
        AUDIO_ID_OFFSET + 1024,
        AUDIO_ID_OFFSET,
    ]


def test_clone_prompt_layout(tok):
    ids = build_clone_prompt(tok, "hello there", AUDIO, "How are you today?", speaker="clone_x")
    system = CLONE_SYSTEM_PROMPT_TEMPLATE.format(
        speaker="clone_x", prompt_text="hello there", prompt_wav_tokens=AUDIO
    )
    newline = tok.encode_text("\n")
    target = tok.encode_text("\nHow are you today?")
    assert target[: len(newline)] == newline
    expected = (
        [1, 4]
        + tok.encode("system\n" + system)
        + [3, 4]
        + tok.encode("human\n")
        + target[len(newline) :]
        + [3, 4]
        + tok.encode("assistant\n")
    )
    assert ids == expected
    turns = split_turns(ids)
    assert len(turns) == 3
    assert turns[2] == tok.encode("assistant\n")
    assert [i - AUDIO_ID_OFFSET for i in turns[0] if i >= AUDIO_ID_OFFSET] == [
        5,
        900,
        1024,
        3000,
        5119,
        0,
        1,
        2000,
        2001,
        2002,
    ]


def test_clone_template_is_upstreams():
    text = CLONE_SYSTEM_PROMPT_TEMPLATE.format(speaker="S", prompt_text="P", prompt_wav_tokens="T")
    assert text == (
        "Generate audio with the following timbre, prosody and speaking style\n\n"
        "[speaker_start]\nspeaker name: S\nspeaker prompt text: \nP\n"
        "speaker audio tokens: \nT\n[speaker_end]\n"
    )


def test_clone_default_speaker_name_is_stable(tok):
    a = build_clone_prompt(tok, "hello", AUDIO, "target")
    b = build_clone_prompt(tok, "hello", AUDIO, "target")
    c = build_clone_prompt(tok, "hello!", AUDIO, "target")
    assert a == b and a != c
    system_text = tok.sp.decode([i for i in split_turns(a)[0] if i < AUDIO_ID_OFFSET])
    assert system_text.count("speaker name: clone_") == 1


def test_edit_task_lists_match_upstream():
    assert len(EDIT_TASKS["emotion"]) == 15 and "remove" in EDIT_TASKS["emotion"]
    assert len(EDIT_TASKS["style"]) == 33 and "remove" in EDIT_TASKS["style"]
    assert EDIT_TASKS["speed"] == ["faster", "slower", "more faster", "more slower"]
    assert EDIT_TASKS["paralinguistic"][:10] == list(PARALINGUISTIC_TAGS_2025)
    assert "[Laughter]" in EDIT_TASKS["paralinguistic"]
    assert set(EDIT_TASKS) == {"emotion", "style", "speed", "paralinguistic", "denoise", "vad"}
    for options in EDIT_TASKS.values():
        assert len(options) == len(set(options))


@pytest.mark.parametrize(
    ("task", "option", "expected"),
    [
        (
            "emotion",
            "happy",
            "Make the following audio more happy. The text corresponding to the audio is: hi\n",
        ),
        ("emotion", "remove", "Remove any emotion in the following audio and the reference text is: hi\n"),
        (
            "speed",
            "faster",
            "Make the following audio more faster. The text corresponding to the audio is: hi\n",
        ),
        (
            "style",
            "whisper",
            "Make the following audio more whisper style. The text corresponding to the audio is: hi\n",
        ),
        (
            "style",
            "remove",
            "Remove any speaking styles in the following audio and the reference text is: hi\n",
        ),
    ],
)
def test_edit_instructions(task, option, expected):
    assert edit_instruction(task, option, " hi ") == expected


def test_denoise_vad_paralinguistic_instructions():
    assert edit_instruction("denoise", None, "x").startswith("Remove any noise from the given audio")
    assert edit_instruction("vad", None, "x").startswith("Remove any silent portions from the given audio")
    assert edit_instruction("paralinguistic", None, "hi", "hi[Laughter]") == (
        "Add some non-verbal sounds to make the audio more natural, the new text is : hi[Laughter]\n"
        "  The text corresponding to the audio is: hi\n"
    )


def test_edit_prompt_layout_every_option(tok):
    for task, options in EDIT_TASKS.items():
        for option in options if task != "paralinguistic" else [None]:
            ids = build_edit_prompt(
                tok, "hello there", AUDIO, task, option, new_text="hello [Laughter] there"
            )
            instruction = edit_instruction(task, option, "hello there", "hello [Laughter] there")
            expected = (
                [1, 4]
                + tok.encode("system\n" + EDIT_SYSTEM_PROMPT)
                + [3, 4]
                + tok.encode("human\n")
                + tok.encode(f"{instruction}\n{AUDIO}\n")
                + [3, 4]
                + tok.encode("assistant\n")
            )
            assert ids == expected, (task, option)


def test_edit_prompt_rejects_bad_requests(tok):
    with pytest.raises(TextInputError, match="unknown edit task"):
        build_edit_prompt(tok, "hi", AUDIO, "pitch", None)
    with pytest.raises(TextInputError, match="emotion edit needs one of"):
        build_edit_prompt(tok, "hi", AUDIO, "emotion", "sleepy")
    with pytest.raises(TextInputError, match="paralinguistic"):
        build_edit_prompt(tok, "hi", AUDIO, "paralinguistic", None)
    with pytest.raises(TextInputError, match="only <audio_N>"):
        build_edit_prompt(tok, "hi", AUDIO + "oops", "denoise", None)
    # denoise and vad do not need a transcript
    assert build_edit_prompt(tok, "", AUDIO, "vad", None)


@pytest.mark.parametrize(
    "text",
    [
        "<audio_12>hi",
        "hi<s>",
        "</s>hi",
        "<|BOT|>hi",
        "h<|EOT|>i",
        "<unk>hi",
        "<|reserved_17|>hi",
        "[speaker_start]hi",
        "hi[speaker_end]",
        "<<s>/s>hi",
        "<<audio_1>audio_2>hi",
        "<AUDIO_3>hi",
    ],
)
def test_sanitize_text_removes_control_strings(text):
    assert sanitize_text(text) == "hi"


def test_sanitize_keeps_ordinary_text_and_tags():
    assert sanitize_text("  Great[Laughter], a <b> tag & 3 < 4  ") == "Great[Laughter], a <b> tag & 3 < 4"


def test_the_2026_release_tags_are_offered_beside_the_older_ones_and_survive_cleaning_and_splitting():
    new = [
        "[inhale]",
        "[exhale]",
        "[chuckle]",
        "[giggle]",
        "[snort]",
        "[clears throat]",
        "[cough]",
        "[laugh]",
        "[breath]",
        "[sigh]",
        "[uhm]",
        "[Surprise-yo]",
        "[Question-ah]",
        "[Question-en]",
    ]
    assert EDIT_TASKS["paralinguistic"] == list(PARALINGUISTIC_TAGS_2025) + new
    text = " ".join(f"Word {tag} here." for tag in [*new, *LANGUAGE_TAGS])
    cleaned = clean_text(text, "target text", DEFAULT_MAX_TEXT_CHARS, [])
    assert cleaned == text
    joined = " ".join(c.text for c in split_text(cleaned, 40))
    assert all(tag in joined for tag in [*new, *LANGUAGE_TAGS])
    assert all(c.text.count("[") == c.text.count("]") for c in split_text(cleaned, 20))  # never cut inside


def test_a_leading_language_tag_is_found_in_any_case():
    assert split_language_tag("[Cantonese]你好") == ("[Cantonese]", "你好")
    assert split_language_tag("  [sichuanese] 你好") == ("[Sichuanese]", "你好")
    assert split_language_tag("你好[Cantonese]") == (None, "你好[Cantonese]")
    assert split_language_tag("[Laughter] hi") == (None, "[Laughter] hi")
    assert LANGUAGE_TAGS == ("[Sichuanese]", "[Cantonese]", "[Japanese]", "[Korean]")


def test_validate_text_errors():
    for bad in ["", "   ", "<|EOT|>", "<audio_1><audio_2>", None]:
        with pytest.raises(TextInputError, match="empty"):
            validate_text(bad)
    assert validate_text(" ok ") == "ok"


def test_clean_text_limits_markup_and_bad_unicode():
    warnings: list[str] = []
    with pytest.raises(TextInputError, match=f"limit is {DEFAULT_MAX_TEXT_CHARS}"):
        clean_text("a" * (DEFAULT_MAX_TEXT_CHARS + 1), "target text", DEFAULT_MAX_TEXT_CHARS, warnings)
    assert clean_text(" Hi <audio_5> there ", "target text", 100, warnings) == "Hi  there"
    assert warnings and "control tokens" in warnings[0]
    with pytest.raises(TextInputError, match="not valid Unicode"):  # a lone surrogate, as raw JSON can send
        clean_text("hello \ud800 world", "target text", 100, [])
    with pytest.raises(TextInputError, match="empty"):
        clean_text("  ", "target text", 100, [])
    assert clean_text(None, "reference text", 100, [], allow_empty=True) == ""


def test_validate_audio_token_str():
    assert validate_audio_token_str(" <audio_1>\n<audio_2> ") == "<audio_1>\n<audio_2>"
    with pytest.raises(TextInputError, match="empty"):
        validate_audio_token_str("  ")
    with pytest.raises(TextInputError, match="outside"):
        validate_audio_token_str("<audio_5120>")
    with pytest.raises(TextInputError, match="only <audio_N>"):
        validate_audio_token_str("<audio_1> hello")


def test_forbidden_ids_are_respelled_as_bytes(tok):
    ids = tok.safe_text_ids([500, EOT_ID, AUDIO_ID_OFFSET + 7])
    assert ids[0] == 500
    assert all(not tok.is_forbidden(i) for i in ids)
    assert tok.sp.decode(ids[1:]) == "<|EOT|>"


_CONTROL = st.sampled_from(
    [
        "<s>",
        "</s>",
        "<|BOT|>",
        "<|EOT|>",
        "<unk>",
        "<audio_3>",
        "<audio_70000>",
        "[speaker_start]",
        "[speaker_end]",
        "<|reserved_9|>",
        "\n",
        "human\n",
        "<",
        ">",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.one_of(st.text(max_size=20), _CONTROL), max_size=8))
def test_target_part_never_holds_special_or_audio_ids(tok, parts):
    text = "".join(parts)
    try:
        ids = build_clone_prompt(tok, "reference words", AUDIO, text, speaker="s")
    except TextInputError:
        assert not sanitize_text(text)
        return
    human = ids.index(EOT_ID) + 2 + len(tok.encode("human\n"))
    end = len(ids) - 2 - len(tok.encode("assistant\n"))
    assert ids[end : end + 2] == [EOT_ID, BOT_ID]
    target = ids[human:end]
    assert target
    assert all(i < AUDIO_ID_OFFSET and i not in TURN_IDS for i in target)


def test_text_that_tokenizes_into_the_audio_range_cannot_reach_the_prompt(demo_llm_root, monkeypatch):
    # A tokenizer whose pieces for "zebra" land on audio ids (as added tokens in a real vocab could).
    tok = StepTextTokenizer(demo_llm_root / "Step-Audio-EditX" / "tokenizer.model")
    plain = tok.encode_text

    def encode_text(text: str) -> list[int]:
        return plain(text) + ([AUDIO_ID_OFFSET + 5, EOT_ID] if "zebra" in text else [])

    monkeypatch.setattr(tok, "encode_text", encode_text)
    ids = build_clone_prompt(tok, "a zebra", AUDIO, "one zebra", speaker="s")
    assert [i for i in ids if i >= AUDIO_ID_OFFSET] == tok.encode(AUDIO)
    assert ids.count(EOT_ID) == 2
    ids = build_edit_prompt(tok, "a zebra", AUDIO, "emotion", "sad")
    assert [i for i in ids if i >= AUDIO_ID_OFFSET] == tok.encode(AUDIO)
    assert ids.count(EOT_ID) == 2
