"""Metrics that are not one task's: BERTScore (answer similarity with a chosen encoder layer)."""

from qajax.metrics.bertscore import BertScorer, IdfWeights, Scores, read_baseline, score_answers

__all__ = ["BertScorer", "IdfWeights", "Scores", "read_baseline", "score_answers"]
