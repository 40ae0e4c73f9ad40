"""Fine-tuning: the training loop (``train``), private BN per resolution (``multires``) and
frozen-backbone adapters (``adapt``)."""
