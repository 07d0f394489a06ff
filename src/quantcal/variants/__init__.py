"""How a variant becomes a model to score: its definition (base model, adapter, recipe, native form) and the
adapter deployment forms. Built weights come from :mod:`quantcal.recipes`, exported forms from :mod:`quantcal.checkpoints`."""
