"""Caption scores: BLEU-4 and CIDEr through pycocoevalcap's own scorers, on PTB-tokenised text.

The COCO caption evaluation tokenises references and candidates with Stanford's PTBTokenizer (Java, CoreNLP 3.4.1,
`-preserveLines -lowerCase`) and then drops punctuation tokens. The `tokenizer` setting chooses how:
- "python": `ptb_tokenize` below, a pure-Python restatement of the PTBTokenizer rules that caption text
  meets (typographic quotes, apostrophes, dashes, the ellipsis, currency and fractions mapped to PTB's ASCII first;
  the characters it cannot tokenise, such as zero-width spaces, joiners, the byte-order mark, controls, private use
  and emoji, dropped and ending the word, the soft hyphen dropped inside it; lower-casing; clitics `n't 's 're 've
  'll 'd 'm` split off, `can not`, `gon na`; quotes to `` and ''; brackets to -lrb- -rrb- ...; `, ; : ? ! % $ / + *
  = < > ~ | & @ # _ \\ ^ °`, © ™ • and PTB's other symbols, a word's last hyphen and a leading one split off where PTB
  splits them; `1 1/2` one token; emoticons ending a word; a chunk's final period split off except from acronyms
  and PTB's abbreviations, and two periods as two). It equals the Java tokenizer on a corpus of 506 caption-like
  lines and on the fuzz-found inputs in the tests (tested where Java is installed); it still differs on rarer
  inputs: abbreviations PTB knows only capitalised (`Mass.`, `Wash.`), `No.5`, `&` or `+` after a mixed-case word
  (`aB&C`), `c++`, `<dog>` (an SGML tag to PTB), an apostrophe inside a word other than a clitic or a digit's
  (`toys'r'us`, `ab'cd`, `rock'n roll`), a ’ opening a word (`’stop’` is `'s top` there), a period before other
  punctuation (`table.!`, `no.$`), a clitic before a hyphen (`kid's-meal`), quoted acronyms (`'S.S.`), `’Tis`, a
  fraction glued to a word (`1 1/2cup`), a decimal number glued to a word (`3.5mm`, `1.5kg` are `3.5 mm`, `1.5 kg`
  there), a.m. or p.m. glued to a time (`10:30p.m.` is `10:30 p.m.` there), a comma, ? or ! ending a web address
  (`www.dog.com?`), letters and symbols Unicode added after Java 8's tables, and glued run-ons of these (`#can't`,
  `it'sjalapeño`).
- "ptb": pycocoevalcap's PTBTokenizer itself, when `java` is on the PATH: the official numbers exactly.
- "auto" (default): "ptb" where `java` is on the PATH, else "python" with a warning; the score file names which ran.
Either way, the line breaks the official wrapper leaves in a caption (it replaces only \n) are spaces first: the
Java tokenizer ends a line at \r, \v, \f, U+2028 and U+2029, which shifted every later caption onto another image's
line (\x1c-\x1e and \x85, which Python calls line breaks, become spaces too: Java drops the first and reads \x85 as
an ellipsis, neither of which a caption means).
Scores are reported as pycocoevalcap returns them (BLEU in 0..1, CIDEr around 0..10), and in percent in `to_dict`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import dropwhile

from meter.errors import ConfigError, DataError
from meter.metrics.stanford_tokenizer import java_problem, stanford_tokenize

log = logging.getLogger(__name__)

TOKENIZERS = ("auto", "python", "ptb")
# line breaks that pycocoevalcap's wrapper, which joins the captions with \n after replacing only \n, leaves in:
# Java's tokenizer (-preserveLines) ends a line at \r \v \f U+2028 U+2029, shifting the later captions onto others
LINE_BREAKS = str.maketrans(dict.fromkeys("\r\v\f\x1c\x1d\x1e\x85\u2028\u2029\n", " "))
# the tokens pycocoevalcap's PTBTokenizer wrapper removes after tokenising (its PUNCTUATIONS list, verbatim)
PUNCTUATION = {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
CLOSING = {"''", "'", "-rrb-", "-rsb-", "-rcb-"}  # after a final period, it is still split off
BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
ABBREVIATIONS = {  # PTBLexer's ABBREV1 and ABBREV2 lists (as 3.4.1 runs them: not `approx`, nor `sat` or `sun`)
    "mr", "mrs", "ms", "dr", "drs", "prof", "profs", "sr", "jr", "st", "ste", "mt", "ft", "vs", "etc", "al", "seq",
    "esq", "inc", "ltd", "co", "cos", "corp", "pty", "plc", "rt", "bancorp", "bhd", "assn", "univ", "intl", "sys",
    "ave", "blvd", "rd", "bldg", "dept", "invt", "elec", "natl", "mfg", "mtg", "tel", "est", "ext", "sq", "jan", "feb",
    "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "mon", "tue", "tues", "wed", "thu", "thurs",
    "fri", "ala", "ariz", "calif", "colo", "conn", "ct", "dak", "fla", "ga", "ind", "kan", "kans", "ky", "md", "mich",
    "minn", "mo", "mont", "neb", "nev", "okla", "penn", "tenn", "va", "vt", "wis", "wisc", "wyo", "gen", "gov", "govs",
    "lt", "col", "sgt", "capt", "rev", "hon", "bros", "sen", "sens", "rep", "reps", "atty", "attys", "messrs", "adm",
    "maj", "cpl", "pvt", "pres", "lieut", "brig", "cmdr", "comdr", "pfc", "spc", "supt", "supts", "det", "adj", "adv",
    "asst", "assoc", "ens", "insp", "mlle", "mme", "msgr", "sfc", "alex", "wm", "jos", "cie", "cf", "ph",
}  # fmt: skip
BEFORE_NUMBER = {"no", "nos", "ca", "fig", "figs", "prop", "art", "pp", "op"}  # ABBREV3: abbreviations before a number
SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "gotta": "got ta", "wanna": "wan na", "lemme": "lem me",
               "gimme": "gim me", "'tis": "'t is", "'twas": "'t was"}  # fmt: skip
# characters PTBTokenizer cannot tokenise and drops, ending the word there (dog\u200bruns is `dog runs`): controls,
# format characters (zero-width space and joiners, direction marks, the word joiner, the byte-order mark), private
# use, U+FFFD, a few rare dashes and quotes, and everything beyond the BMP (emoji, which its lexer reads as surrogates)
UNTOKENIZABLE = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f\x81-\x9f\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff\ufff9-\ufffd"
    "\ue000-\uf8ff\u2012\u2015\u201b\u2024\u2025\u2027\u2039\u203a\u203c\u2043\u2047-\u2049\U00010000-\U0010ffff]"
)
# symbols PTB makes tokens of their own wherever they stand (its MISCSYMBOL class and kin, as 3.4.1 runs them): ©, ®,
# ™, •, ·, §, ¡, ¿, ´, superscripts, arrows, mathematical symbols and dingbats (★, ✓), fullwidth punctuation
SYMBOLS = (
    "*=<>~|\\\\^¡¥-©¬®-´¶-¹¿×÷\u037e\u0387\u0589\u05be\u05c0\u05c3\u05c6\u05f3\u05f4\u0600-\u0603\u0606-\u060c\u0614"
    "\u061b\u061e\u061f\u066a\u066d\u06d4\u0700-\u070d\u07f6-\u07f8\u0964\u0965\u0e3f\u0e4f\u1fbd\u2016\u2017\u201a"
    "\u201e-\u2023\u2030-\u2038\u203b\u203e-\u2042\u2044\u2070\u2074-\u207e\u2080-\u208e\u20a4\u2100\u2101\u2103-\u2106"
    "\u2108\u2109\u2114\u2116-\u2118\u211e-\u2123\u2125\u2127\u2129\u212e\u213a\u213b\u2140-\u2144\u214a-\u214d\u214f"
    "\u2155-\u215e\u2190-\u2bff\u3001\u3002\u3012\u30fb\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40\uff5b-\uff65\uffe0"
    "\uffe1\uffe5\uffe6"
)
# an emoticon ending a chunk (:), ;-), :D, dog:P) is one token, its round brackets as -lrb- -rrb- (but not :o or :})
SMILEY = re.compile(r"[<>]?[:;=][-o*']?[()DPdpO\\{@|\[\]]$")
SPACES = re.compile(r"[^\S\xa0]+")  # what separates chunks: whitespace but the no-break space inside a fraction
# a whole number and a fraction (1 1/2) are one token, the space a no-break space, where PTB's FRAC matches them
FRACTION = re.compile(r"(?<![^\s(\[{])(\d{1,4})[ \xa0](?=\d{1,4}/\d{1,4}(?![\w/]))")
URL = re.compile(r"(?:https?://|www\.)\S+|[\w.+-]+@[\w-]+\.[\w.-]+")
# characters PTBTokenizer maps to the ASCII of the Penn Treebank before its rules (typographic quotes and
# apostrophes, dashes, the ellipsis, currency, fractions): web-typed captions are full of them
# ’ as PTB reads it: an apostrophe before a clitic (’s ’re ’ve ’ll ’d ’m, n’t), a closing quote after a word (or its
# punctuation), a quote standing alone; inside a word (o’clock, O’Neil), before one (’em, ’90s, rock ’n’ roll) it stays
CURLY_APOSTROPHE = re.compile(r"’(?=(?:s|re|ve|ll|d|m)\b)|(?<=n)’(?=t\b)|(?<=[\w,.!?;:])(?<!’n)’(?!\w)|(?<!\S)’(?!\S)")
TYPOGRAPHY = str.maketrans({"‘": "`", "“": '"', "”": '"', "«": '"', "»": '"', "–": " -- ", "—": " -- ",
                            "…": " ... ", "£": " # ", "€": "$", "\x80": "$", "¤": "$", "₠": "$", "¢": " cents ",
                            "½": " 1/2 ", "¼": " 1/4 ", "¾": " 3/4 ", "⅓": " 1/3 ", "⅔": " 2/3 "})  # fmt: skip
_CASED_RULES = [  # applied to each chunk before lower-casing: these classes of PTB's lexer are case-sensitive
    (re.compile(r"(?<![A-Z])&|&(?![A-Z])"), " & "),  # & stays only between capitals (AT&T, B&W), not in b&w, black&
    (re.compile(r"(?<=\d)'(?=\d\d(?![\w\"']))"), " '"),  # feet and two-digit inches: 5'10 is `5 '10`
    (re.compile(r"(?<=\d)'(?!(?i:s|re|ve|ll|d|m)\b)(?=\w)|(?<=\w)'(?=\d)"), " ' "),  # by a digit: 5'6, not 90's
    (re.compile(r"^[yY]'(?=[^\W\d_])"), r"\g<0> "),  # y'all, y'know are `y' all`, `y' know`
    (re.compile(r"\+(?=\d)"), " +"),  # a number's sign (+5; 5+5 is `5 +5`)
    (re.compile(r"(?<![A-Z])\+(?!\d)|\+(?![A-Z\d])"), " + "),  # and otherwise split off, but for A+B
]
_RULES = [  # applied in order to each whitespace-separated chunk of lower-cased text
    (re.compile(r"^\"|(?<=[(\[{`])\""), " `` "),
    (re.compile(r"\""), " '' "),
    (re.compile(r"''"), " '' "),
    (re.compile(r"^`+|`+$"), r" \g<0> "),
    (re.compile(r"(?<=\w)`(?=\w)"), " ` "),
    (re.compile(r"^'(?=[a-z])(?!t(?:is|was)\b)(?!(?:em|til|cause)\b)(?!(?:s|re|ve|ll|d|m)$)(?!n'?$)"), "` "),
    (re.compile(r"^'(?=\d(?!\d))"), "' "),  # '5 (but '50 and '90s are words)
    (re.compile(r"\.\.\."), " ... "),
    (re.compile(r"^\.(?=[^\W\d_])"), ". "),  # a period glued to the next word's start (.red; .5 is a number)
    (re.compile(r"-{2,}"), " -- "),
    (re.compile(r"(?<=\w)-(?=\W*$)"), " - "),  # a hyphen ending a word (horse-)
    (re.compile(r"^-(?=[^\W\d_])"), "- "),  # and one starting it (-a cat; -5 is a number)
    (re.compile(r"[()\[\]{}]"), lambda m: f" {BRACKETS[m.group()]} "),
    (re.compile(r"[?!]{2,}|(?<![^\W_])[?!]|[?!](?![^\W\d_])"), r" \g<0> "),  # not one between letters (ab!cd)
    (re.compile(r";|,(?!\d)|:(?!\d)|(?<!\d):"), r" \g<0> "),
    (re.compile(r"(?<!\d),(?=\d)"), " ,"),  # ,3 is a number, as .3 is
    (re.compile(r"[%$]|#{2,}|#(?![^\W\d_])"), r" \g<0> "),
    (re.compile(r"(?<=[^\s#])#(?=[^\W\d_])"), " #"),  # a hashtag (red#bus is `red #bus`)
    (re.compile(r"@+(?!\w)|^@+(?=\d)"), r" \g<0> "),  # @ but in a user name or an address (@user, a@b, a@5)
    (re.compile(r"_{2,}|(?<![^\W_])(?<!@)_+|_+(?![^\W_])"), r" \g<0> "),  # underscores but one inside a word (dog_cat)
    (re.compile(r"(?<=\S)/$|^/(?=\S)"), " / "),
    (re.compile(f"[{SYMBOLS}]"), r" \g<0> "),  # symbols PTB always splits off (5*, 50°f, dog\cat, dog´s, ©)
    (re.compile(r"(?<=\d:\d\d)(am|pm)(?=\.*(?:\s|$))"), r" \1"),  # 3:00pm splits (3:00pm, too), 3pm does not
    (re.compile(r"'n'"), " 'n' "),
    (re.compile(r"(?<=\w)n't\b"), " n't"),
    (re.compile(r"(?:(?<=\w)|(?<=[a-z]\.))'(s|re|ve|ll|d|m)\b"), r" '\1"),  # also after an acronym (u.s.'s)
    # a closing quote after a word, but not the apostrophe of PTB's words ol', somethin', dunkin', l', d', j'
    (
        re.compile(
            r"(?:(?<=\w)|(?<=\w\.))(?<!'n)(?<!(?<!\S)ol)(?<!(?<!\S)somethin)(?<!(?<!\S)dunkin)(?<!(?<!\S)[ldj])'(?=\W*$)"
        ),  # after a word's final period too ('stop.')
        " ' ",
    ),
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
    if periods == 1 and (stem in ABBREVIATIONS or (stem in BEFORE_NUMBER and number_follows)):
        return [token]
    return [stem, *["."] * periods]


def _split_word(word: str) -> str:
    """`cannot` as `can not` (and `cannot.` as `can not.`: its final period is split off later)."""
    stem = word.rstrip(".")
    return SPLIT_WORDS[stem] + word[len(stem) :] if stem in SPLIT_WORDS else word


def _words(text: str) -> list[str]:
    return [word for word in SPACES.split(text) if word]


def ptb_tokenize(text: str) -> str:
    """One caption as PTBTokenizer (-lowerCase) would tokenise it, tokens joined by single spaces."""
    chunks = []
    text = FRACTION.sub("\\1\xa0", UNTOKENIZABLE.sub(" ", text).replace("\xa0", " "))  # before ½ is ` 1/2 `
    # the soft hyphen goes: PTB removes it from words (gr\xadass is `grass`)
    text = CURLY_APOSTROPHE.sub("'", text).translate(TYPOGRAPHY).replace("\xad", "").replace("&amp;", "&")
    for chunk in _words(text):
        url = URL.fullmatch(chunk)
        smiley = None if url else SMILEY.search(chunk)
        emoticon = [smiley.group().lower().replace("(", "-lrb-").replace(")", "-rrb-")] if smiley else []
        chunk = chunk[: smiley.start()] if smiley else chunk
        for pattern, replacement in [] if url else _CASED_RULES:
            chunk = pattern.sub(replacement, chunk)
        chunk = chunk.lower()
        for pattern, replacement in [] if url else _RULES:
            chunk = pattern.sub(replacement, chunk)
        chunks.append(_words(" ".join(_split_word(word) for word in _words(chunk))) + emoticon)
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
    """The tokenizer that runs for the setting `tokenizer`: "auto" is Java's where a java runs."""
    if tokenizer not in TOKENIZERS:
        raise ConfigError(f"caption tokenizer {tokenizer!r}; choose one of: {', '.join(TOKENIZERS)}")
    if tokenizer != "auto":
        return tokenizer
    problem = java_problem()
    if not problem:
        return "ptb"
    log.warning("captions: %s, so BLEU and CIDEr tokenise with meter's Python restatement of Stanford's "
                "PTBTokenizer; it equals the official one on common caption text, not on every input (install Java "
                "for the official numbers)", problem)  # fmt: skip
    return "python"


def tokenize_captions(captions: Mapping[str, Sequence[str]], tokenizer: str = "auto") -> dict[str, list[str]]:
    """id -> captions, tokenised and without punctuation, as the COCO evaluation feeds its scorers."""
    tokenizer = resolved_tokenizer(tokenizer)
    captions = {key: [c.translate(LINE_BREAKS) for c in texts] for key, texts in captions.items()}
    if tokenizer == "python":
        return {key: [_drop_punctuation(ptb_tokenize(c)) for c in texts] for key, texts in captions.items()}
    if problem := java_problem():
        raise ConfigError(f"caption tokenizer 'ptb' runs Stanford's PTBTokenizer, which needs java: {problem}")
    return stanford_tokenize(captions, PUNCTUATION)


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

    tokenizer = resolved_tokenizer(tokenizer)  # once: "auto" without java warns once
    gts = tokenize_captions(references, tokenizer)
    res = tokenize_captions({key: [candidates[key]] for key in references}, tokenizer)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, _ = Cider().compute_score(gts, res)
    return CaptionScores(tuple(float(b) for b in bleu), float(cider))
