"""Prompt building for the Step1 LLM: text tokenizer, clone and edit prompts.

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
from pathlib import Path

from errors import ModelFilesError, TextInputError
from models.audio_tokens import AUDIO_ID_OFFSET, AUDIO_TOKEN_RE, codes_in
from models.edit_tasks import EDIT_TASKS, TASKS_WITH_OPTION
from models.text_input import sanitize_text, validate_audio_token_str, validate_text

# Special ids of the checkpoint's tokenizer / config.json (STEP1_FACTS §3).
UNK_ID = 0  # also the pad id
BOS_ID = 1
TOKENIZER_EOS_ID = 2
EOT_ID = 3  # end of turn; the model's eos_token_id
BOT_ID = 4  # begin of turn
TURN_IDS = frozenset({BOS_ID, TOKENIZER_EOS_ID, EOT_ID, BOT_ID})

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


class StepTextTokenizer:
    """The checkpoint's sentencepiece ``tokenizer.model`` plus the ``<audio_N>`` added tokens."""

    def __init__(self, model_file: Path) -> None:
        import sentencepiece as spm  # here, so that importing the prompt rules stays light

        model_file = Path(model_file)
        if not model_file.is_file():
            raise ModelFilesError(
                f"tokenizer.model not found in {model_file.parent.name}; the "
                "Step-Audio-EditX folder is incomplete (download it again)"
            )
        try:
            self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        except (OSError, RuntimeError) as exc:
            raise ModelFilesError(
                f"cannot read {model_file.name} in {model_file.parent.name} ({exc}); "
                "the file is damaged, download it again"
            ) from exc
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
            ids += part(text[pos : m.start()])
            ids.append(AUDIO_ID_OFFSET + int(m.group(1)))
            pos = m.end()
        ids += part(text[pos:])
        return ids

    def is_forbidden(self, token_id: int) -> bool:
        """Ids user text must never produce: turn/special ids, control pieces, the audio range."""
        return (
            token_id in TURN_IDS
            or token_id >= AUDIO_ID_OFFSET
            or token_id >= self.sp.get_piece_size()
            or self.sp.is_control(token_id)
        )

    def safe_text_ids(self, ids: list[int]) -> list[int]:
        """Replace any forbidden id (e.g. a user-defined piece in the audio range) by its byte pieces."""
        out: list[int] = []
        for i in ids:
            if not self.is_forbidden(i):
                out.append(i)
                continue
            surface = self.sp.id_to_piece(i) if i < self.sp.get_piece_size() else ""
            out += [
                self._byte_ids[b]
                for b in surface.replace("\u2581", " ").encode("utf-8")
                if b in self._byte_ids
            ]
        return out


def clone_speaker_name(prompt_text: str, prompt_token_str: str) -> str:
    """A stable voice id for the clone template (upstream hashes text + samples; we hash text + tokens)."""
    digest = hashlib.sha256((prompt_text + "\0" + prompt_token_str).encode("utf-8")).hexdigest()[:16]
    return f"clone_{digest}"


def _frame(tok: StepTextTokenizer, system_ids: list[int], human_ids: list[int]) -> list[int]:
    return (
        [BOS_ID, BOT_ID]
        + system_ids
        + [EOT_ID, BOT_ID]
        + tok.encode("human\n")
        + human_ids
        + [EOT_ID, BOT_ID]
        + tok.encode("assistant\n")
    )


def _checked_ids(tok: StepTextTokenizer, text: str, audio_tokens: str, what: str) -> list[int]:
    """enc(text) with safe text parts; the only audio ids in it must be those of ``audio_tokens``
    (the ones we put there ourselves) and no turn id may appear."""
    ids = tok.encode(text, safe_text=True)
    allowed = [AUDIO_ID_OFFSET + n for n in codes_in(audio_tokens)]
    if [i for i in ids if i >= AUDIO_ID_OFFSET] != allowed or any(i in TURN_IDS for i in ids):
        raise TextInputError(f"{what} contains control tokens that could not be removed")
    return ids


def build_clone_prompt(
    tok: StepTextTokenizer,
    prompt_text: str,
    prompt_token_str: str,
    target_text: str,
    speaker: str | None = None,
) -> list[int]:
    """Clone prompt ids (see the module docstring); texts are validated and sanitised here."""
    prompt_text = validate_text(prompt_text, "the reference transcript")
    target_text = validate_text(target_text, "the target text")
    prompt_token_str = validate_audio_token_str(prompt_token_str, "the reference audio tokens")
    speaker = sanitize_text(speaker) if speaker else clone_speaker_name(prompt_text, prompt_token_str)
    system = CLONE_SYSTEM_PROMPT_TEMPLATE.format(
        speaker=speaker, prompt_text=prompt_text, prompt_wav_tokens=prompt_token_str
    )
    system_ids = _checked_ids(tok, "system\n" + system, prompt_token_str, "the prompt text")
    newline = tok.encode_text("\n")
    target = tok.encode_text("\n" + target_text)
    if target[: len(newline)] == newline:
        target = target[len(newline) :]
    return _frame(tok, system_ids, tok.safe_text_ids(target))


def edit_instruction(task: str, option: str | None, audio_text: str, new_text: str | None = None) -> str:
    """Upstream's instruction sentence for an edit task (ends with a newline)."""
    audio_text = (audio_text or "").strip()
    if task in ("emotion", "speed"):
        if option == "remove":
            return f"Remove any emotion in the following audio and the reference text is: {audio_text}\n"
        return (
            f"Make the following audio more {option}. The text corresponding to the audio is: {audio_text}\n"
        )
    if task == "style":
        if option == "remove":
            return (
                f"Remove any speaking styles in the following audio and the reference text is: {audio_text}\n"
            )
        return (
            f"Make the following audio more {option} style. The text corresponding to the audio is: "
            f"{audio_text}\n"
        )
    if task == "denoise":
        return (
            "Remove any noise from the given audio while preserving the voice content clearly. Ensure "
            "that the speech quality remains intact with minimal distortion, and eliminate all noise "
            "from the audio.\n"
        )
    if task == "vad":
        return (
            "Remove any silent portions from the given audio while preserving the voice content clearly. "
            "Ensure that the speech quality remains intact with minimal distortion, and eliminate all "
            "silence from the audio.\n"
        )
    if task == "paralinguistic":
        return (
            f"Add some non-verbal sounds to make the audio more natural, the new text is : {new_text}\n"
            f"  The text corresponding to the audio is: {audio_text}\n"
        )
    raise TextInputError(f"unknown edit task {task!r}; choose one of {', '.join(EDIT_TASKS)}")


def encode_edit_prompt(
    tok: StepTextTokenizer, system_prompt: str, instruction: str, audio_tokens: str
) -> list[int]:
    """Edit prompt ids from an already-built instruction (upstream ``_encode_audio_edit_prompt``)."""
    audio_tokens = audio_tokens.strip()
    human = _checked_ids(tok, f"{instruction}\n{audio_tokens}\n", audio_tokens, "the edit instruction")
    return _frame(tok, tok.encode("system\n" + system_prompt, safe_text=True), human)


def build_edit_prompt(
    tok: StepTextTokenizer,
    audio_text: str,
    audio_tokens: str,
    task: str,
    option: str | None,
    new_text: str | None = None,
) -> list[int]:
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
    return encode_edit_prompt(
        tok, EDIT_SYSTEM_PROMPT, edit_instruction(task, option, audio_text, new_text), audio_tokens
    )
