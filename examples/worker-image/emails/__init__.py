"""Example worker app packaged by examples/worker-image/Dockerfile (see docs/worker-image.md)."""
