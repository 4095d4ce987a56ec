"""Networks and their numerics: transformer blocks, VAR/VIAR, the implicit layer, tokenizer, quantizer, resampling, fixed-point solvers."""
