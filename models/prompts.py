"""Prompt building for the Step1 LLM: text tokenizer, clone and edit prompts, text sanitising.

Layout (upstream ``tts.py`` of stepfun-ai/Step-Audio-EditX, STEP1_FACTS §3), with ``enc`` = raw
sentencepiece of ``tokenizer.model`` (no BOS/EOS) where every ``<audio_N>`` in the string becomes
id 65536 + N and the text between them is encoded piece by piece:

    clone: [1] [4] enc("system\\n" + SYS) [3] [4] enc("human\\n") enc_text(TARGET) [3] [4] enc("assistant\\n")
    edit:  [1] [4] enc("system\\n" + EDIT_SYS) [3] [4] enc("human\\n") enc(INSTR + "\\n" + AUDIO + "\\n")
           [3] [4] enc("assistant\\n")

with ``enc_text(t)`` = ``enc("\\n" + t)`` minus the leading tokens of ``enc("\\n")``.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from errors import ModelFilesError, TextInputError
from models.audio_tokens import AUDIO_CODES, AUDIO_ID_OFFSET, AUDIO_TOKEN_RE, codes_in

log = logging.getLogger(__name__)

# Special ids of the checkpoint's tokenizer / config.json (STEP1_FACTS §3).
UNK_ID = 0  # also the pad id
BOS_ID = 1
TOKENIZER_EOS_ID = 2
EOT_ID = 3  # end of turn; the model's eos_token_id
BOT_ID = 4  # begin of turn
TURN_IDS = frozenset({BOS_ID, TOKENIZER_EOS_ID, EOT_ID, BOT_ID})

# Longest text a person may send (--max-text-chars); the prompt builders themselves take any length.
DEFAULT_MAX_TEXT_CHARS = 20_000  # --max-text-chars; long text is spoken in chunks (text_split.py)

# Upstream config/prompts.py: AUDIO_EDIT_CLONE_SYSTEM_PROMPT_TPL and AUDIO_EDIT_SYSTEM_PROMPT.
CLONE_SYSTEM_PROMPT_TEMPLATE = (
    "Generate audio with the following timbre, prosody and speaking style\n"
    "\n"
    "[speaker_start]\n"
    "speaker name: {speaker}\n"
    "speaker prompt text: \n"
    "{prompt_text}\n"
    "speaker audio tokens: \n"
    "{prompt_wav_tokens}\n"
    "[speaker_end]\n"
)
EDIT_SYSTEM_PROMPT = (
    "As a highly skilled audio editing and tuning specialist, you excel in interpreting user "
    "instructions and applying precise adjustments to meet their needs. Your expertise spans a wide "
    "range of enhancement capabilities, including but not limited to:\n"
    "# Emotional Enhancement\n"
    "# Speaking Style Transfer\n"
    "# Non-linguistic Adjustments\n"
    "# Audio Tuning & Editing\n"
    "Note: You will receive instructions in natural language and are expected to accurately interpret "
    "and execute the most suitable audio edits and enhancements.\n"
)

# Paralinguistic tags a person writes into a text, e.g. "Great[Laughter]": the first release's ten
# (upstream README), then those the 2026-01-29 model release added (both spellings are kept as the
# model was trained on them). Clone text keeps them too (sanitize_text and text_split leave them whole).
PARALINGUISTIC_TAGS_2025 = (
    "[Breathing]", "[Laughter]", "[Surprise-oh]", "[Confirmation-en]", "[Uhm]", "[Surprise-ah]",
    "[Surprise-wa]", "[Sigh]", "[Question-ei]", "[Dissatisfaction-hnn]",
)
PARALINGUISTIC_TAGS_2026 = (
    "[inhale]", "[exhale]", "[chuckle]", "[giggle]", "[snort]", "[clears throat]", "[cough]", "[laugh]",
    "[breath]", "[sigh]", "[uhm]", "[Surprise-yo]", "[Question-ah]", "[Question-en]",
)
PARALINGUISTIC_TAGS = PARALINGUISTIC_TAGS_2025 + PARALINGUISTIC_TAGS_2026
# Tags that set the language or dialect of a whole clone text, written before it (upstream README:
# "add a [Sichuanese] / [Cantonese] / [Japanese] / [Korean] tag before your text").
LANGUAGE_TAGS = ("[Sichuanese]", "[Cantonese]", "[Japanese]", "[Korean]")
_LANGUAGE_TAG_RE = re.compile(r"\s*(" + "|".join(map(re.escape, LANGUAGE_TAGS)) + r")\s*", re.IGNORECASE)

# Upstream config/edit_config.py (option lists); for "paralinguistic" the options are the tags above.
EDIT_TASKS: dict[str, list[str]] = {
    "emotion": [
        "happy", "angry", "sad", "humour", "confusion", "disgusted", "empathy", "embarrass", "fear",
        "surprised", "excited", "depressed", "coldness", "admiration", "remove",
    ],
    "style": [
        "serious", "arrogant", "child", "older", "girl", "pure", "sister", "sweet", "ethereal",
        "whisper", "gentle", "recite", "generous", "act_coy", "warm", "shy", "comfort", "authority",
        "chat", "radio", "soulful", "story", "vivid", "program", "news", "advertising", "roar",
        "murmur", "shout", "deeply", "loudly", "remove", "exaggerated",
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

# Strings that mean something to the prompt frame or the tokenizer and must not come from user text.
_CONTROL_RE = re.compile(
    r"<audio_\d+>|</?s>|<unk>|<\|[^<>|]{0,40}\|>|\[speaker_(?:start|end)\]",
    re.IGNORECASE,
)


def sanitize_text(text: str) -> str:
    """Remove everything from user text that could act as a prompt control token; strip the ends.

    Removed: ``<audio_N>`` strings, ``<s>``, ``</s>``, ``<unk>``, ``<|...|>`` tokens (``<|BOT|>``,
    ``<|EOT|>``, reserved tokens) and the ``[speaker_start]``/``[speaker_end]`` markers. Removal repeats
    until nothing changes, so a nested form like ``<<s>/s>`` cannot reassemble a token.
    """
    if not isinstance(text, str):
        raise TextInputError(f"text must be a string, got {type(text).__name__}")
    previous = None
    while previous != text:
        previous = text
        text = _CONTROL_RE.sub("", text)
    return text.strip()


def split_language_tag(text: str) -> tuple[str | None, str]:
    """(the leading language or dialect tag in its canonical spelling, the rest of the text), or
    (None, text) when the text does not start with one of ``LANGUAGE_TAGS``."""
    match = _LANGUAGE_TAG_RE.match(text or "")
    if not match:
        return None, text
    tag = next(t for t in LANGUAGE_TAGS if t.lower() == match.group(1).lower())
    return tag, text[match.end():]


def clean_text(text: str | None, what: str, limit: int, warnings: list[str],
               allow_empty: bool = False) -> str:
    """Strip and sanitise a person's ``text`` (control tokens such as ``<audio_3>`` are removed, with
    a note appended to ``warnings``); refuse it when it is longer than ``limit`` characters, not
    valid Unicode, or (unless ``allow_empty``) empty."""
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise TextInputError(f"the {what} must be text, got {type(text).__name__}")
    raw = text.strip()
    if len(raw) > limit:
        raise TextInputError(f"the {what} is {len(raw)} characters long; the limit is {limit} "
                             f"(--max-text-chars). Split it into shorter pieces.")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate (e.g. "\ud800"), sendable as JSON escapes
        raise TextInputError(f"the {what} contains a character that is not valid Unicode (position "
                             f"{exc.start}); remove it or retype the text") from None
    cleaned = sanitize_text(raw)
    if cleaned != raw:
        note = f"removed control tokens or markup from the {what}"
        log.warning("%s: %r -> %r", note, raw[:80], cleaned[:80])
        warnings.append(note)
    if not cleaned and not allow_empty:
        if raw:
            raise TextInputError(f"the {what} contains only control tokens or markup; type ordinary words")
        raise TextInputError(f"the {what} is empty; type the words to speak")
    return cleaned


def validate_text(text: str | None, what: str = "text") -> str:
    """Sanitise a text for a prompt; raises TextInputError when nothing usable is left."""
    if text is None:
        raise TextInputError(f"{what} is empty: type the text to speak")
    clean = sanitize_text(text)
    if not clean:
        raise TextInputError(f"{what} is empty (after removing control tokens): type the text to speak")
    return clean


def validate_audio_token_str(token_str: str, what: str = "audio tokens") -> str:
    """Check that a string holds only ``<audio_N>`` tokens (N < 5120) and whitespace; returns it stripped."""
    token_str = (token_str or "").strip()
    rest = AUDIO_TOKEN_RE.sub("", token_str)
    if rest.strip():
        raise TextInputError(f"{what} must contain only <audio_N> tokens; found other text "
                             f"{rest.strip()[:40]!r}")
    codes = codes_in(token_str)
    if not codes:
        raise TextInputError(f"{what} are empty: the reference audio produced no tokens")
    bad = [c for c in codes if c >= AUDIO_CODES]
    if bad:
        raise TextInputError(f"{what} contain codes outside [0, {AUDIO_CODES}): {bad[:5]}")
    return token_str


class StepTextTokenizer:
    """The checkpoint's sentencepiece ``tokenizer.model`` plus the ``<audio_N>`` added tokens."""

    def __init__(self, model_file: Path) -> None:
        import sentencepiece as spm  # here, so that importing the prompt rules stays light

        model_file = Path(model_file)
        if not model_file.is_file():
            raise ModelFilesError(f"tokenizer.model not found in {model_file.parent.name}; the "
                                  "Step-Audio-EditX folder is incomplete (download it again)")
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        except (OSError, RuntimeError) as exc:
            raise ModelFilesError(f"cannot read {model_file.name} in {model_file.parent.name} ({exc}); "
                                  "the file is damaged, download it again") from exc
        self.model_file = model_file
        # Byte pieces let a forbidden piece be re-spelled from its bytes (see safe_text_ids).
        self._byte_ids = {}
        for b in range(256):
            pid = self.sp.piece_to_id(f"<0x{b:02X}>")
            if pid != self.sp.unk_id() and self.sp.is_byte(pid):
                self._byte_ids[b] = pid

    def encode_text(self, text: str) -> list[int]:
        """Raw sentencepiece ids of plain text (no BOS/EOS, no audio tokens)."""
        return self.sp.encode(text) if text else []

    def encode(self, text: str, safe_text: bool = False) -> list[int]:
        """Text with ``<audio_N>`` tokens -> ids; each text part is encoded on its own.

        With ``safe_text`` the text parts can only yield ordinary text ids (see ``safe_text_ids``),
        so the only audio ids in the result are those written as ``<audio_N>``.
        """
        def part(t: str) -> list[int]:
            ids = self.encode_text(t)
            return self.safe_text_ids(ids) if safe_text else ids

        ids: list[int] = []
        pos = 0
        for m in AUDIO_TOKEN_RE.finditer(text):
            ids += part(text[pos:m.start()])
            ids.append(AUDIO_ID_OFFSET + int(m.group(1)))
            pos = m.end()
        ids += part(text[pos:])
        return ids

    def is_forbidden(self, token_id: int) -> bool:
        """Ids user text must never produce: turn/special ids, control pieces, the audio range."""
        return (token_id in TURN_IDS or token_id >= AUDIO_ID_OFFSET or token_id >= self.sp.get_piece_size()
                or self.sp.is_control(token_id))

    def safe_text_ids(self, ids: list[int]) -> list[int]:
        """Replace any forbidden id (e.g. a user-defined piece in the audio range) by its byte pieces."""
        out: list[int] = []
        for i in ids:
            if not self.is_forbidden(i):
                out.append(i)
                continue
            surface = self.sp.id_to_piece(i) if i < self.sp.get_piece_size() else ""
            out += [self._byte_ids[b] for b in surface.replace("\u2581", " ").encode("utf-8")
                    if b in self._byte_ids]
        return out


def clone_speaker_name(prompt_text: str, prompt_token_str: str) -> str:
    """A stable voice id for the clone template (upstream hashes text + samples; we hash text + tokens)."""
    digest = hashlib.sha256((prompt_text + "\0" + prompt_token_str).encode("utf-8")).hexdigest()[:16]
    return f"clone_{digest}"


def _frame(tok: StepTextTokenizer, system_ids: list[int], human_ids: list[int]) -> list[int]:
    return ([BOS_ID, BOT_ID] + system_ids + [EOT_ID, BOT_ID] + tok.encode("human\n") + human_ids
            + [EOT_ID, BOT_ID] + tok.encode("assistant\n"))


def _checked_ids(tok: StepTextTokenizer, text: str, audio_tokens: str, what: str) -> list[int]:
    """enc(text) with safe text parts; the only audio ids in it must be those of ``audio_tokens``
    (the ones we put there ourselves) and no turn id may appear."""
    ids = tok.encode(text, safe_text=True)
    allowed = [AUDIO_ID_OFFSET + n for n in codes_in(audio_tokens)]
    if [i for i in ids if i >= AUDIO_ID_OFFSET] != allowed or any(i in TURN_IDS for i in ids):
        raise TextInputError(f"{what} contains control tokens that could not be removed")
    return ids


def build_clone_prompt(tok: StepTextTokenizer, prompt_text: str, prompt_token_str: str, target_text: str,
                       speaker: str | None = None) -> list[int]:
    """Clone prompt ids (see the module docstring); texts are validated and sanitised here."""
    prompt_text = validate_text(prompt_text, "the reference transcript")
    target_text = validate_text(target_text, "the target text")
    prompt_token_str = validate_audio_token_str(prompt_token_str, "the reference audio tokens")
    speaker = sanitize_text(speaker) if speaker else clone_speaker_name(prompt_text, prompt_token_str)
    system = CLONE_SYSTEM_PROMPT_TEMPLATE.format(speaker=speaker, prompt_text=prompt_text,
                                                 prompt_wav_tokens=prompt_token_str)
    system_ids = _checked_ids(tok, "system\n" + system, prompt_token_str, "the prompt text")
    newline = tok.encode_text("\n")
    target = tok.encode_text("\n" + target_text)
    if target[:len(newline)] == newline:
        target = target[len(newline):]
    return _frame(tok, system_ids, tok.safe_text_ids(target))


def edit_instruction(task: str, option: str | None, audio_text: str, new_text: str | None = None) -> str:
    """Upstream's instruction sentence for an edit task (ends with a newline)."""
    audio_text = (audio_text or "").strip()
    if task in ("emotion", "speed"):
        if option == "remove":
            return f"Remove any emotion in the following audio and the reference text is: {audio_text}\n"
        return (f"Make the following audio more {option}. The text corresponding to the audio is: "
                f"{audio_text}\n")
    if task == "style":
        if option == "remove":
            return ("Remove any speaking styles in the following audio and the reference text is: "
                    f"{audio_text}\n")
        return (f"Make the following audio more {option} style. The text corresponding to the audio is: "
                f"{audio_text}\n")
    if task == "denoise":
        return ("Remove any noise from the given audio while preserving the voice content clearly. Ensure "
                "that the speech quality remains intact with minimal distortion, and eliminate all noise "
                "from the audio.\n")
    if task == "vad":
        return ("Remove any silent portions from the given audio while preserving the voice content clearly. "
                "Ensure that the speech quality remains intact with minimal distortion, and eliminate all "
                "silence from the audio.\n")
    if task == "paralinguistic":
        return (f"Add some non-verbal sounds to make the audio more natural, the new text is : {new_text}\n"
                f"  The text corresponding to the audio is: {audio_text}\n")
    raise TextInputError(f"unknown edit task {task!r}; choose one of {', '.join(EDIT_TASKS)}")


def encode_edit_prompt(tok: StepTextTokenizer, system_prompt: str, instruction: str,
                       audio_tokens: str) -> list[int]:
    """Edit prompt ids from an already-built instruction (upstream ``_encode_audio_edit_prompt``)."""
    audio_tokens = audio_tokens.strip()
    human = _checked_ids(tok, f"{instruction}\n{audio_tokens}\n", audio_tokens, "the edit instruction")
    return _frame(tok, tok.encode("system\n" + system_prompt, safe_text=True), human)


def build_edit_prompt(tok: StepTextTokenizer, audio_text: str, audio_tokens: str, task: str,
                      option: str | None, new_text: str | None = None) -> list[int]:
    """Edit prompt ids for one of EDIT_TASKS; validates the option and the texts."""
    if task not in EDIT_TASKS:
        raise TextInputError(f"unknown edit task {task!r}; choose one of {', '.join(EDIT_TASKS)}")
    if task in TASKS_WITH_OPTION and option not in EDIT_TASKS[task]:
        raise TextInputError(f"{task} edit needs one of: {', '.join(EDIT_TASKS[task])} (got {option!r})")
    audio_tokens = validate_audio_token_str(audio_tokens, "the audio tokens to edit")
    if task in ("denoise", "vad"):
        audio_text = sanitize_text(audio_text or "")
    else:
        audio_text = validate_text(audio_text, "the transcript of the audio")
    if task == "paralinguistic":
        new_text = validate_text(new_text, "the new text with paralinguistic tags")
    return encode_edit_prompt(tok, EDIT_SYSTEM_PROMPT, edit_instruction(task, option, audio_text, new_text),
                              audio_tokens)
