"""Example worker application packaged by examples/worker-image/Dockerfile (docs/worker-image.md)."""
