"""text_split: sentences and chunks for long text in Chinese, English, Japanese and Korean."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from text_split import (
    PAUSE_CLAUSE_S,
    PAUSE_PARAGRAPH_S,
    PAUSE_SENTENCE_S,
    PAUSE_WORD_S,
    split_sentences,
    split_text,
)


def sentences(text: str) -> list[str]:
    return [s.text for s in split_sentences(text)]


def test_english_sentences_keep_numbers_abbreviations_initials_and_tags_whole():
    text = (
        "Dr. Smith paid $3.14 for 1,000 apples at 12:30, e.g. red ones [laugh]. Then J. K. Rowling "
        "arrived! Was it the U.S. office? It was approx. three o'clock... maybe four."
    )
    assert sentences(text) == [
        "Dr. Smith paid $3.14 for 1,000 apples at 12:30, e.g. red ones [laugh].",
        "Then J. K. Rowling arrived!",
        "Was it the U.S. office?",
        "It was approx. three o'clock... maybe four.",
    ]


def test_chinese_japanese_korean_sentences():
    assert sentences("你好。今天天气很好！我们去公园吧？好的；走吧……") == [
        "你好。",
        "今天天气很好！",
        "我们去公园吧？",
        "好的；",
        "走吧……",
    ]
    assert sentences("こんにちは。元気ですか？はい、元気です！") == [
        "こんにちは。",
        "元気ですか？",
        "はい、元気です！",
    ]
    assert sentences("안녕하세요. 잘 지내세요? 네, 잘 지내요!") == [
        "안녕하세요.",
        "잘 지내세요?",
        "네, 잘 지내요!",
    ]


def test_quotes_and_repeated_marks_stay_with_their_sentence():
    assert sentences('He said "Stop." She left?! Fine.') == ['He said "Stop."', "She left?!", "Fine."]
    assert sentences("「行くよ。」彼は言った。") == ["「行くよ。」", "彼は言った。"]


def test_line_breaks_end_sentences_with_a_longer_pause():
    parts = split_sentences("A line without a period\nNext line.\n\nNew paragraph.")
    assert [p.text for p in parts] == ["A line without a period", "Next line.", "New paragraph."]
    assert parts[0].pause_s == PAUSE_PARAGRAPH_S and parts[1].pause_s == PAUSE_PARAGRAPH_S
    assert parts[2].pause_s == PAUSE_SENTENCE_S


def test_periods_without_a_space_are_not_sentence_ends():
    assert sentences("Open file.txt or visit example.com now. Version 2.0.1 is out.") == [
        "Open file.txt or visit example.com now.",
        "Version 2.0.1 is out.",
    ]


def test_chunks_pack_sentences_up_to_the_limit():
    text = " ".join(f"Sentence number {i} is here." for i in range(20))
    chunks = split_text(text, max_chars=80)
    assert all(len(c.text) <= 80 for c in chunks)
    assert " ".join(c.text for c in chunks) == text
    assert all(c.pause_s == PAUSE_SENTENCE_S for c in chunks[:-1]) and chunks[-1].pause_s == 0.0


def test_a_long_sentence_is_cut_at_commas_then_spaces_never_mid_word():
    clause = "one two three four five six seven eight nine ten"
    text = ", ".join([clause] * 6) + "."
    chunks = split_text(text, max_chars=60)
    assert all(len(c.text) <= 60 for c in chunks)
    assert any(c.pause_s == PAUSE_CLAUSE_S for c in chunks)
    words = re.findall(r"[a-z]+", text)
    assert [w for c in chunks for w in re.findall(r"[a-z]+", c.text)] == words
    no_commas = " ".join(["supercalifragilistic"] * 30)  # no punctuation at all
    chunks = split_text(no_commas, max_chars=50)
    assert all(len(c.text) <= 50 for c in chunks) and all(c.pause_s == PAUSE_WORD_S for c in chunks[:-1])
    assert all(set(c.text.split()) == {"supercalifragilistic"} for c in chunks)


def test_cjk_without_punctuation_is_cut_between_characters_but_not_inside_latin_or_tags():
    text = "这是一个没有标点的句子" * 10 + "Hello[laugh]world" + "的句子" * 10
    chunks = split_text(text, max_chars=30)
    assert all(len(c.text) <= 30 for c in chunks)
    assert "".join(c.text for c in chunks) == text
    assert any("Hello[laugh]world" in c.text for c in chunks)


def test_one_unbreakable_piece_longer_than_the_limit_stays_whole():
    word = "x" * 300
    assert [c.text for c in split_text(f"Short. {word} end.", max_chars=50)] == ["Short.", word, "end."]


def test_no_empty_chunks():
    assert split_text("") == [] and split_text("   \n\n \t ") == []
    assert sentences("...\n\nHi.\n\n\n") == ["...", "Hi."]
    assert [c.text for c in split_text("...\n\nHi.\n\n\n")] == ["... Hi."]
    assert all(c.text.strip() for c in split_text("。。。！！ ?? ; ;; \n a"))


TAGS = ["[laugh]", "[breath]", "[Surprise-yo]", "[clears throat]"]
PIECES = st.sampled_from(
    [
        "Hello",
        "world",
        "3.14",
        "Dr.",
        "e.g.",
        "你好",
        "世界",
        "。",
        "！",
        ",",
        ", ",
        ". ",
        "? ",
        "\n",
        " ",
        "안녕",
        "です",
        *TAGS,
    ]
)


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(PIECES, max_size=80), limit=st.integers(8, 120))
def test_chunks_cover_the_text_in_order_within_the_limit(parts, limit):
    text = "".join(parts)
    chunks = split_text(text, max_chars=limit)
    squash = lambda s: re.sub(r"\s+", "", s)  # noqa: E731 - spaces between chunks may change
    assert squash("".join(c.text for c in chunks)) == squash(text)
    for chunk in chunks:
        assert chunk.text == chunk.text.strip() and chunk.text
        # a chunk exceeds the limit only when it holds no cut point (space or CJK outside a tag)
        untagged = re.sub(r"\[[^\]]*\]", "", chunk.text)
        assert len(chunk.text) <= limit or not re.search(r"[\s\u3040-\u30ff\u4e00-\u9fff]", untagged[:-1])
        assert chunk.text.count("[") == chunk.text.count("]")  # a tag is never cut
