#!/usr/bin/env bash
# Placeholder until the control-plane issue lands: see issue "A real Kubernetes control plane".
echo "testbin: not built yet" >&2
