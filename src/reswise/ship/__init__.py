"""Ship: the artifact a user deploys: the policy file, AdaptiveClassifier, the per-stage ONNX
export, the torch-free runtime (``ship.runtime``: numpy + onnxruntime + pillow) and the
cascade's measured latency. Nothing here is imported by this file, so ``import
reswise.ship.runtime`` stays torch-free."""
