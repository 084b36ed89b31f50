"""Research scripts (method comparison, Taylor vs ablation, speed and distillation-cost studies): run from a
checkout with `python -m research.NAME`; not part of the installed package (see README)."""
