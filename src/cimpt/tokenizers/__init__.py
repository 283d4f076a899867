"""Image tokenizers: the frozen encoder/decoder of visual tokens that CIM corrupts through."""
