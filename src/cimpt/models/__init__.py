"""Networks: the small BEiT generator, the enhancer wrapper around timm backbones, and heads."""
