"""The model store (BentoML), the production alias and the promotion gate with its way back."""
