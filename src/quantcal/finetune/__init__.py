"""QLoRA / LoRA fine-tuning of a base model in quantized weight space: the base model's form, the training examples
(disjoint from the evaluation items) and the training loop. How an adapter is deployed is :mod:`quantcal.variants`."""
