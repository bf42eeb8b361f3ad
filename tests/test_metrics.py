"""Metrics against numbers worked out by hand (the arithmetic is in each comment)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest

from polytask import metrics as m


def test_accuracy_and_macro_f1():
    assert m.accuracy([1, 0, 1, 1], [1, 1, 1, 0]) == 0.5
    # a: P=1, R=1/2, F=2/3; b: P=1/2, R=1, F=2/3; c: F=1 -> mean 7/9
    assert m.macro_f1(list("aabc"), list("abbc")) == pytest.approx(7 / 9)


def test_f1_binary_one_against_rest():
    # TP=1 FP=1 FN=1 -> F1 = 2/(2+1+1) = 1/2; "neu" counts as not-positive
    assert m.f1_binary(["pos", "pos", "neg", "neu"], ["pos", "neg", "pos", "neu"], "pos") == 0.5
    assert m.f1_binary([0, 0], [0, 0], positive=1) == 0.0  # undefined -> 0, no warning


def test_matthews_of_a_known_confusion():
    # TP=3 FN=1 FP=1 TN=2: (3*2 - 1*1) / sqrt(4*4*3*3) = 5/12
    assert m.matthews([1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 1, 0, 0]) == pytest.approx(5 / 12)
    assert m.matthews([1, 0, 1], [1, 1, 1]) == 0.0  # one predicted class only


def test_correlations():
    # dx=(-1,0,1), dy=(-4/3,-1/3,5/3): r = 3 / (sqrt(2) * sqrt(42)/3) = 9/sqrt(84)
    assert m.pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(9 / math.sqrt(84))
    # rank differences (-2, 1, 1): rho = 1 - 6*6/(3*(9-1)) = -1/2
    assert m.spearman([1, 2, 3], [3, 1, 2]) == pytest.approx(-0.5)
    assert m.spearman(np.array([1.0, 2.0]), np.array([5.0, 7.0])) == pytest.approx(1.0)


def test_correlation_of_constant_input_is_zero_not_nan():
    assert m.pearson([1, 2, 3], [2, 2, 2]) == 0.0
    assert m.spearman([4, 4, 4], [1, 2, 3]) == 0.0
    assert m.pearson([1], [2]) == 0.0


def test_multilabel_sets_and_matrix_agree():
    true = [{"a", "b"}, {"c"}, {"a"}]
    pred = [{"a"}, {"c", "b"}, {"a"}]
    # pooled: TP=3 (a, c, a), FP=1, FN=1 -> 6/8; per label: a=1, b=0, c=1 -> 2/3
    assert m.multilabel_f1(true, pred) == pytest.approx(0.75)
    assert m.multilabel_f1(true, pred, average="macro") == pytest.approx(2 / 3)
    true_matrix = [[1, 1, 0], [0, 0, 1], [1, 0, 0]]
    pred_matrix = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0]])
    assert m.multilabel_f1(true_matrix, pred_matrix) == pytest.approx(0.75)
    assert m.multilabel_f1(true_matrix, pred_matrix, "macro") == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="average"):
        m.multilabel_f1(true, pred, average="weighted")


def test_entity_prf_wrong_boundary_and_spurious_entity():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "O"]]
    pred = [["B-PER", "O", "O", "B-LOC"], ["B-ORG", "O"]]
    # true: PER[0:2], LOC[3]; pred: PER[0:1] (wrong boundary), LOC[3], ORG[0] (spurious)
    # correct = 1 -> P = 1/3, R = 1/2, F1 = 2*(1/6)/(5/6) = 0.4
    scores = m.entity_prf(true, pred)
    assert scores["precision"] == pytest.approx(1 / 3)
    assert scores["recall"] == pytest.approx(1 / 2)
    assert scores["f1"] == pytest.approx(0.4)


def test_entity_prf_default_mode_is_conlleval_like():
    true, pred = [["B-PER", "I-PER"]], [["I-PER", "I-PER"]]
    assert m.entity_prf(true, pred)["f1"] == 1.0  # I- after O starts an entity
    assert m.entity_prf(true, pred, mode="strict", scheme="IOB2")["f1"] == 0.0
    with pytest.raises(ValueError, match="sequence 0"):
        m.entity_prf([["O", "O"]], [["O"]])


def test_rouge_by_hand():
    # ref "the cat sat" vs "the cat": unigrams P=1 R=2/3 F=0.8; bigrams P=1 R=1/2 F=2/3; LCS=2
    scores = m.rouge(["the cat sat"], ["the cat"])
    assert scores["rouge1"] == pytest.approx(0.8)
    assert scores["rouge2"] == pytest.approx(2 / 3)
    assert scores["rougeL"] == pytest.approx(0.8)


def test_rouge_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "rouge_score", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"polytask\[llm\]"):
        m.rouge(["a"], ["a"])


def test_delta_m_with_lower_is_better_metric():
    mtl = {"acc": 0.9, "rmse": 0.8}
    single = {"acc": 0.8, "rmse": 1.0}
    # acc: +(0.9-0.8)/0.8 = 0.125; rmse (lower better): -(0.8-1.0)/1.0 = 0.2 -> 100*0.325/2
    assert m.delta_m(mtl, single, {"acc": True, "rmse": False}) == pytest.approx(16.25)
    assert m.delta_m({"t": 0.5}, {"t": 0.5}, {"t": True}) == 0.0


def test_delta_m_guards():
    with pytest.raises(ValueError, match="'t' is 0"):
        m.delta_m({"t": 0.5}, {"t": 0.0}, {"t": True})
    with pytest.raises(ValueError, match="tasks differ"):
        m.delta_m({"a": 1.0}, {"b": 1.0}, {"a": True, "b": True})
    with pytest.raises(ValueError, match="missing"):
        m.delta_m({"a": 1.0}, {"a": 1.0}, {})
    # negative baseline (e.g. MCC): improving from -0.2 to -0.1 still counts as +50%
    assert m.delta_m({"mcc": -0.1}, {"mcc": -0.2}, {"mcc": True}) == pytest.approx(50.0)


def test_length_mismatch_and_empty_are_errors():
    with pytest.raises(ValueError, match="length mismatch"):
        m.accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="no examples"):
        m.macro_f1([], [])
