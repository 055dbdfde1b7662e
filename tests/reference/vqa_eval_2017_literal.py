"""A literal restatement of the 2017 official VQAv2 evaluation loop (GT-Vision-Lab/VQA vqaEval.py at a4f1afd,
"updated for v2.0", October 2017; what papers before 2021 report), in Python 3 and written independently of
meter.metrics.vqa to cross-check it: the same in-place mutation order (the prediction stripped and fully processed;
the ground truth never stripped, and punctuation-processed only when the ten differ), the same dict-equality
leave-one-out, the same per-type bookkeeping."""

from __future__ import annotations

import copy

from tests.reference.vqa_eval_processing_literal import VQAEvalProcessing


class VQAEval2017(VQAEvalProcessing):
    def __init__(self, annotations, predictions, n=2):
        super().__init__()
        self.n = n
        self.accuracy = {}
        self.evalQA = {}
        # what VQA(...).qa and VQA.loadRes(...).qa hold: question_id -> annotation, question_id -> result
        self.gtQa = {ann["question_id"]: copy.deepcopy(ann) for ann in annotations}
        self.resQa = {quesId: {"question_id": quesId, "answer": answer} for quesId, answer in predictions.items()}
        self.quesIds = [ann["question_id"] for ann in annotations]

    def evaluate(self):
        quesIds = self.quesIds
        gts = {}
        res = {}
        for quesId in quesIds:
            gts[quesId] = self.gtQa[quesId]
            res[quesId] = self.resQa[quesId]
        accQA = []
        accQuesType = {}
        accAnsType = {}
        for quesId in quesIds:
            resAns = res[quesId]["answer"]
            resAns = resAns.replace("\n", " ")
            resAns = resAns.replace("\t", " ")
            resAns = resAns.strip()
            resAns = self.processPunctuation(resAns)
            resAns = self.processDigitArticle(resAns)
            gtAcc = []
            gtAnswers = [ans["answer"] for ans in gts[quesId]["answers"]]
            if len(set(gtAnswers)) > 1:
                for ansDic in gts[quesId]["answers"]:
                    ansDic["answer"] = self.processPunctuation(ansDic["answer"])
            for gtAnsDatum in gts[quesId]["answers"]:
                otherGTAns = [item for item in gts[quesId]["answers"] if item != gtAnsDatum]
                matchingAns = [item for item in otherGTAns if item["answer"] == resAns]
                acc = min(1, float(len(matchingAns)) / 3)
                gtAcc.append(acc)
            quesType = gts[quesId]["question_type"]
            ansType = gts[quesId]["answer_type"]
            avgGTAcc = float(sum(gtAcc)) / len(gtAcc)
            accQA.append(avgGTAcc)
            if quesType not in accQuesType:
                accQuesType[quesType] = []
            accQuesType[quesType].append(avgGTAcc)
            if ansType not in accAnsType:
                accAnsType[ansType] = []
            accAnsType[ansType].append(avgGTAcc)
            self.setEvalQA(quesId, avgGTAcc)
        self.setAccuracy(accQA, accQuesType, accAnsType)


def evaluate(annotations, predictions):
    """The official `accuracy` dict (overall, perQuestionType, perAnswerType) plus `evalQA` (per question)."""
    vqa_eval = VQAEval2017(annotations, predictions)
    vqa_eval.evaluate()
    return {**vqa_eval.accuracy, "evalQA": vqa_eval.evalQA}
