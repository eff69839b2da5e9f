"""Detectors: the `Detector` interface (base), the plugins by type key (registry), one module
per plugin (maskrcnn, yolox), and the factory that builds the configured one (factory)."""
