"""The edit tasks, their options, and the tags a person may write into a text.

    EDIT_TASKS["emotion"]          # the options an emotion edit takes ("happy", ..., "remove")
    TASKS_WITH_OPTION              # tasks whose instruction names one of those options
    PARALINGUISTIC_TAGS            # "[Laughter]", "[Sigh]", ...: sounds written into a text
    LANGUAGE_TAGS                  # "[Cantonese]", ...: the language of a whole clone text

Upstream config/edit_config.py and the upstream README; models/prompts.py turns a task and option
into the instruction sentence, models/text_input.py reads a leading language tag off a text.
"""

from __future__ import annotations

# Paralinguistic tags a person writes into a text, e.g. "Great[Laughter]": the first release's ten
# (upstream README), then those the 2026-01-29 model release added (both spellings are kept as the
# model was trained on them). Clone text keeps them too (sanitize_text and text_split leave them whole).
PARALINGUISTIC_TAGS_2025 = (
    "[Breathing]",
    "[Laughter]",
    "[Surprise-oh]",
    "[Confirmation-en]",
    "[Uhm]",
    "[Surprise-ah]",
    "[Surprise-wa]",
    "[Sigh]",
    "[Question-ei]",
    "[Dissatisfaction-hnn]",
)
PARALINGUISTIC_TAGS_2026 = (
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
)
PARALINGUISTIC_TAGS = PARALINGUISTIC_TAGS_2025 + PARALINGUISTIC_TAGS_2026
# Tags that set the language or dialect of a whole clone text, written before it (upstream README:
# "add a [Sichuanese] / [Cantonese] / [Japanese] / [Korean] tag before your text").
LANGUAGE_TAGS = ("[Sichuanese]", "[Cantonese]", "[Japanese]", "[Korean]")

# Upstream config/edit_config.py (option lists); for "paralinguistic" the options are the tags above.
EDIT_TASKS: dict[str, list[str]] = {
    "emotion": [
        "happy",
        "angry",
        "sad",
        "humour",
        "confusion",
        "disgusted",
        "empathy",
        "embarrass",
        "fear",
        "surprised",
        "excited",
        "depressed",
        "coldness",
        "admiration",
        "remove",
    ],
    "style": [
        "serious",
        "arrogant",
        "child",
        "older",
        "girl",
        "pure",
        "sister",
        "sweet",
        "ethereal",
        "whisper",
        "gentle",
        "recite",
        "generous",
        "act_coy",
        "warm",
        "shy",
        "comfort",
        "authority",
        "chat",
        "radio",
        "soulful",
        "story",
        "vivid",
        "program",
        "news",
        "advertising",
        "roar",
        "murmur",
        "shout",
        "deeply",
        "loudly",
        "remove",
        "exaggerated",
    ],
    "speed": ["faster", "slower", "more faster", "more slower"],
    "paralinguistic": list(PARALINGUISTIC_TAGS),
    "denoise": [],
    "vad": [],
}
# Tasks whose instruction names one option from EDIT_TASKS.
TASKS_WITH_OPTION = ("emotion", "style", "speed")
# Tasks whose instruction does not quote the audio's text (so an empty text is fine there).
TEXTLESS_TASKS = ("denoise", "vad")
