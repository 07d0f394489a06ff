"""Scoring engines behind one record (:class:`~quantcal.engines.hf_scorer.ItemScores`): quantcal's packed HF scorer
and vLLM's prompt log-probabilities, with the lm-eval-exact tokenisation they share and depth replay."""
