"""Self-supervised pretraining of the backbone: SimSiam and SSQL (SPEC 11; Cao et al., ECCV 2022).

- `views`: the two augmented views of each image, whole-batch tensor ops (no flips for digits).
- `model`: backbone + projector (encoder f) + predictor (h); SSQL's switchable quantized pass.
- `loss`: D(p, z) = -cos(p, stopgrad(z)), the SimSiam loss and SSQL's two-branch loss.
- `plugin`: the engine plugin with the two-view `loss`, the seeded per-step bit draws, and the
  collapse guard.
- `linear`: linear evaluation of a frozen backbone quantized post-training at each bit pair.

The training stage itself is a recipe on the engine, `lq.train.ssl`.
"""
