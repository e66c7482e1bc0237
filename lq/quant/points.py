"""Where activation quantizers go in a float model.

Models are written once, in float. They mark each place the reference quantizes an activation
with an `ActQuantPoint` (an identity in float), and `lq.quant.convert.quantize_model` swaps every
marker for a k-bit activation quantizer, so no model class names a bit width.
"""

from torch import nn


class ActQuantPoint(nn.Identity):
    """Identity placeholder replaced by an activation quantizer on conversion."""
