"""Measure: the one-pass sweep (images -> records) and what it needs: the evaluation loop,
exact FLOPs, backends (eager / compile / ONNX Runtime), latency, BN recalibration, the
machine's peak (doctor), torchrun sharding and resumable progress."""
