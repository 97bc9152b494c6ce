"""Integrations of fp8attn with other libraries; each submodule imports its library, this package imports none."""
