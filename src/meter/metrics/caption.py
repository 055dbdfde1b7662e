"""Caption scores: BLEU-4 and CIDEr through pycocoevalcap's own scorers, on PTB-tokenised text.

The COCO caption evaluation tokenises references and candidates with Stanford's PTBTokenizer (Java, CoreNLP 3.4.1,
`-preserveLines -lowerCase`) and then drops punctuation tokens. Two tokenisers are offered:
- "python": `ptb_tokenize` below, a pure-Python restatement of the PTBTokenizer rules that caption text
  meets (typographic quotes, apostrophes, dashes, the ellipsis, £ € and ½ mapped to PTB's ASCII first; lower-
  casing; clitics `n't 's 're 've 'll 'd 'm` split off, `can not`, `gon na`; quotes to `` and ''; brackets to
  -lrb- -rrb- ...; `, ; : ? ! % $ / + * = < > ~ | °` and a word's last hyphen split off where PTB splits them; a
  chunk's final period split off except from acronyms and common abbreviations, and two periods as two). It equals
  the Java tokenizer on a corpus of 506 caption-like lines (tested where Java is installed); it still differs on
  rarer inputs: the full abbreviation lists, a caption's last abbreviation (`approx.`), `No.5`, emoticons (`:)`),
  `&` between lower-case letters (`b&w`), feet and inches (`5'6"`, `4’x8’`), a period glued to the next word (`hat
  .A`) or before `!` (`table.!`), a clitic before a hyphen (`kid's-meal`), quoted acronyms (`'S.S.`), `toys'r'us`,
  `y'all`, `y’know`, `’Tis`, low quotes (`‚`).
- "ptb": pycocoevalcap's PTBTokenizer itself, when `java` is on the PATH: the official numbers exactly.
- "auto" (default): "ptb" where `java` is on the PATH, else "python" with a warning; the score file names which ran.
Either way, the line breaks the official wrapper leaves in a caption (\r, \v, \f, \x1c-\x1e, \x85, U+2028, U+2029: it
replaces only \n) are spaces first: the Java tokenizer reads them as line ends, which shifted every later caption
onto another image's line.
Scores are reported as pycocoevalcap returns them (BLEU in 0..1, CIDEr around 0..10), and in percent in `to_dict`.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import dropwhile

from meter.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TOKENIZERS = ("auto", "python", "ptb")
# characters that end a line for Java's tokenizer (-preserveLines) and that pycocoevalcap's wrapper, which joins the
# captions with \n after replacing only \n, leaves in: each would shift the later captions onto other images
LINE_BREAKS = str.maketrans(dict.fromkeys("\r\v\f\x1c\x1d\x1e\x85\u2028\u2029\n", " "))
# the tokens pycocoevalcap's PTBTokenizer wrapper removes after tokenising (its PUNCTUATIONS list, verbatim)
PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
CLOSING = {"''", "'", "-rrb-", "-rsb-", "-rcb-"}  # after a final period, it is still split off
BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "ft", "vs", "etc", "inc", "ltd", "co", "corp", "ave",
    "blvd", "rd", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "gen", "gov",
    "lt", "col", "sgt", "capt", "rev", "hon", "bros", "dept", "est", "approx",
}  # fmt: skip
SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na", "lemme": "lem me",
               "gimme": "gim me", "'tis": "'t is", "'twas": "'t was"}  # fmt: skip
BEYOND_BMP = re.compile("[\U00010000-\U0010ffff]")  # emoji, mathematical letters: PTBTokenizer drops them
URL = re.compile(r"(?:https?://|www\.)\S+|[\w.+-]+@[\w-]+\.[\w.-]+")
# characters PTBTokenizer maps to the ASCII of the Penn Treebank before its rules (typographic quotes and
# apostrophes, dashes, the ellipsis, currency, fractions): web-typed captions are full of them
# ’ as PTB reads it: an apostrophe before a clitic (’s ’re ’ve ’ll ’d ’m, n’t), a closing quote after a word (or its
# punctuation), a quote standing alone; inside a word (o’clock, O’Neil), before one (’em, ’90s, rock ’n’ roll) it stays
CURLY_APOSTROPHE = re.compile(r"’(?=(?:s|re|ve|ll|d|m)\b)|(?<=n)’(?=t\b)|(?<=[\w,.!?;:])(?<!’n)’(?!\w)|(?<!\S)’(?!\S)")
TYPOGRAPHY = str.maketrans({"‘": "`", "“": '"', "”": '"', "«": '"', "»": '"', "–": " -- ", "—": " -- ",
                            "…": " ... ", "£": "#", "€": "$", "½": "1/2", "¼": "1/4", "¾": "3/4"})  # fmt: skip
_RULES = [  # applied in order to each whitespace-separated chunk of lower-cased text
    (re.compile(r"^\"|(?<=[(\[{`])\""), " `` "),
    (re.compile(r"\""), " '' "),
    (re.compile(r"''"), " '' "),
    (re.compile(r"^`+|`+$"), r" \g<0> "),
    (re.compile(r"(?<=\w)`(?=\w)"), " ` "),
    (re.compile(r"^'(?=[a-z])(?!t(?:is|was)\b)(?!(?:em|til|cause)\b)(?!(?:s|re|ve|ll|d|m)$)(?!n'$)"), "` "),
    (re.compile(r"\.\.\."), " ... "),
    (re.compile(r"-{2,}"), " -- "),
    (re.compile(r"(?<=\w)-(?=\W*$)"), " - "),  # a hyphen ending a word (horse-)
    (re.compile(r"[()\[\]{}]"), lambda m: f" {BRACKETS[m.group()]} "),
    (re.compile(r"[?!]+"), r" \g<0> "),
    (re.compile(r";|,(?!\d)|(?<!\d),|:(?!\d)|(?<!\d):"), r" \g<0> "),
    (re.compile(r"[%$]|#(?=\d)"), r" \g<0> "),
    (re.compile(r"(?<=\S)/$|^/(?=\S)"), " / "),
    (re.compile(r"[+*=<>~|°×−]"), r" \g<0> "),  # symbols PTB always splits off (food+drinks, 5*, 50°f)
    (re.compile(r"(?<=\d:\d\d)(am|pm)(?=\.*(?:\s|$))"), r" \1"),  # 3:00pm splits (3:00pm, too), 3pm does not
    (re.compile(r"'n'"), " 'n' "),
    (re.compile(r"(?<=\w)n't\b"), " n't"),
    (re.compile(r"(?<=\w)'(s|re|ve|ll|d|m)\b"), r" '\1"),
    (re.compile(r"(?<=\w)(?<!'n)'(?=\W*$)"), " ' "),
]


def _split_period(token: str, next_token: str | None) -> list[str]:
    """A chunk's final period(s) go, except from acronyms (u.s., p.m., b.) and abbreviations (mr., no. 5); a
    second period after them, and two standing alone, are periods of their own (`u.s..`, `bench ..`)."""
    stem = token.rstrip(".")
    periods = len(token) - len(stem)
    if not stem and periods == 2:
        return [".", "."]
    if periods == 0 or not stem:
        return [token]
    if re.fullmatch(r"(?:[a-z]\.)*[a-z]", stem):
        return [f"{stem}.", *["."] * (periods - 1)]
    number_follows = next_token is not None and next_token[:1].isdigit()
    if periods == 1 and (stem in ABBREVIATIONS or (stem == "no" and number_follows)):
        return [token]
    return [stem, *["."] * periods]


def _split_word(word: str) -> str:
    """`cannot` as `can not` (and `cannot.` as `can not.`: its final period is split off later)."""
    stem = word.rstrip(".")
    return SPLIT_WORDS[stem] + word[len(stem) :] if stem in SPLIT_WORDS else word


def ptb_tokenize(text: str) -> str:
    """One caption as PTBTokenizer (-lowerCase) would tokenise it, tokens joined by single spaces."""
    chunks = []
    text = BEYOND_BMP.sub("", CURLY_APOSTROPHE.sub("'", text).translate(TYPOGRAPHY))
    for chunk in text.replace("\n", " ").replace("&amp;", "&").lower().split():
        if not URL.fullmatch(chunk):
            for pattern, replacement in _RULES:
                chunk = pattern.sub(replacement, chunk)
        chunks.append(" ".join(_split_word(word) for word in chunk.split()).split())
    words = [word for chunk in chunks for word in chunk]
    ends, start = set(), 0
    for chunk in chunks:  # a chunk's last word before its closing quotes and brackets: `dog."` but not `people.,`
        closing = len(chunk) - len(list(dropwhile(lambda word: word in CLOSING, reversed(chunk))))
        ends.add(start + len(chunk) - 1 - closing)
        start += len(chunk)
    tokens: list[str] = []
    for i, word in enumerate(words):
        tokens += _split_period(word, words[i + 1] if i + 1 < len(words) else None) if i in ends else [word]
    return " ".join(tokens)


def _drop_punctuation(tokenized: str) -> str:
    return " ".join(w for w in tokenized.split(" ") if w not in PUNCTUATION)


def resolved_tokenizer(tokenizer: str) -> str:
    """The tokenizer that runs for the setting `tokenizer`: "auto" is Java's where java is on the PATH."""
    if tokenizer not in TOKENIZERS:
        raise ConfigError(f"caption tokenizer {tokenizer!r}; choose one of: {', '.join(TOKENIZERS)}")
    if tokenizer != "auto":
        return tokenizer
    if shutil.which("java") is not None:
        return "ptb"
    log.warning("captions: no java on the PATH, so BLEU and CIDEr tokenise with meter's Python restatement of "
                "Stanford's PTBTokenizer; it equals the official one on common caption text, not on every input "
                "(install Java for the official numbers)")  # fmt: skip
    return "python"


def tokenize_captions(captions: Mapping[str, Sequence[str]], tokenizer: str = "auto") -> dict[str, list[str]]:
    """id -> captions, tokenised and without punctuation, as the COCO evaluation feeds its scorers."""
    tokenizer = resolved_tokenizer(tokenizer)
    captions = {key: [c.translate(LINE_BREAKS) for c in texts] for key, texts in captions.items()}
    if tokenizer == "python":
        return {key: [_drop_punctuation(ptb_tokenize(c)) for c in texts] for key, texts in captions.items()}
    if shutil.which("java") is None:
        raise ConfigError("caption tokenizer 'ptb' runs Stanford's PTBTokenizer, which needs java on the PATH")
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({key: [{"caption": c} for c in texts] for key, texts in captions.items()})


@dataclass(frozen=True)
class CaptionScores:
    bleu: tuple[float, float, float, float]  # BLEU-1..4 (0..1)
    cider: float

    def to_dict(self) -> dict[str, float]:
        return {"bleu4": 100 * self.bleu[3], "cider": 100 * self.cider} | {
            f"bleu{n}": 100 * b for n, b in enumerate(self.bleu[:3], 1)
        }


def caption_scores(
    references: Mapping[str, Sequence[str]], candidates: Mapping[str, str], tokenizer: str = "auto"
) -> CaptionScores:
    """BLEU-1..4 and CIDEr(-D as pycocoevalcap computes it) of one candidate per image against its references."""
    if not references:
        raise DataError("captions: no images to score")
    missing = [key for key in references if key not in candidates]
    if missing:
        raise DataError(f"captions: {len(missing)} of {len(references)} images have no caption, e.g. {missing[0]!r}")
    empty = [key for key, texts in references.items() if not texts]
    if empty:
        raise DataError(f"captions: {len(empty)} images have no reference caption, e.g. {empty[0]!r}")
    # imported here, so that training (and the GPU benchmark, on machines without pycocoevalcap) never needs it
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    gts = tokenize_captions(references, tokenizer)
    res = tokenize_captions({key: [candidates[key]] for key in references}, tokenizer)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return CaptionScores(tuple(float(b) for b in bleu), float(cider))
