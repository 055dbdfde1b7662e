"""The answer processing of the official VQAv2 evaluation (GT-Vision-Lab/VQA,
PythonEvaluationTools/vqaEvaluation/vqaEval.py, Python 2 code), restated literally in Python 3 (with Python 2's
round) and written independently of meter.metrics.vqa to cross-check it. The tables, processPunctuation and
processDigitArticle are the same in the 2017 (a4f1afd) and the 2021 (a013f00) versions; only `evaluate` differs
(vqa_eval_2017_literal, vqa_eval_2021_literal). The contraction table is read from the shared reference copy of the
official one."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path

_TABLE = Path(__file__).resolve().parents[2] / "src/meter/metrics/vqa_contractions.tsv"


def round(x, n):  # Python 2's, which the official code runs with: a half goes away from zero
    scaled = Fraction(x) * 10**n
    whole = math.floor(abs(scaled) + Fraction(1, 2))
    return math.copysign(float(Fraction(whole, 10**n)), x)


def _official_contractions():
    return dict(line.split("\t") for line in _TABLE.read_text().splitlines() if line and not line.startswith("#"))


class VQAEvalProcessing:
    def __init__(self):
        self.contractions = _official_contractions()
        self.manualMap = {
            "none": "0",
            "zero": "0",
            "one": "1",
            "two": "2",
            "three": "3",
            "four": "4",
            "five": "5",
            "six": "6",
            "seven": "7",
            "eight": "8",
            "nine": "9",
            "ten": "10",
        }
        self.articles = ["a", "an", "the"]
        self.periodStrip = re.compile(r"(?!<=\d)(\.)(?!\d)")
        self.commaStrip = re.compile(r"(\d)(\,)(\d)")
        self.punct = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                      "?", "!"]  # fmt: skip

    def processPunctuation(self, inText):
        outText = inText
        for p in self.punct:
            if (p + " " in inText or " " + p in inText) or (re.search(self.commaStrip, inText) != None):  # noqa: E711
                outText = outText.replace(p, "")
            else:
                outText = outText.replace(p, " ")
        outText = self.periodStrip.sub("", outText, re.UNICODE)  # sic: re.UNICODE (32) lands in `count`
        return outText

    def processDigitArticle(self, inText):
        outText = []
        tempText = inText.lower().split()
        for word in tempText:
            word = self.manualMap.setdefault(word, word)
            if word not in self.articles:
                outText.append(word)
            else:
                pass
        for wordId, word in enumerate(outText):
            if word in self.contractions:
                outText[wordId] = self.contractions[word]
        outText = " ".join(outText)
        return outText

    # the bookkeeping both versions share
    def setAccuracy(self, accQA, accQuesType, accAnsType):
        self.accuracy["overall"] = round(100 * float(sum(accQA)) / len(accQA), self.n)
        self.accuracy["perQuestionType"] = {
            quesType: round(100 * float(sum(accQuesType[quesType])) / len(accQuesType[quesType]), self.n)
            for quesType in accQuesType
        }
        self.accuracy["perAnswerType"] = {
            ansType: round(100 * float(sum(accAnsType[ansType])) / len(accAnsType[ansType]), self.n)
            for ansType in accAnsType
        }

    def setEvalQA(self, quesId, acc):
        self.evalQA[quesId] = round(100 * acc, self.n)
