"""Faces: detection with 5 landmarks (`detect`), alignment to the generator's framing (`align`),
synthetic masks (`masks`), and the sample photos that ship with insightface (`samples`).

Pure functions on uint8 RGB arrays; only `detect` touches a neural network, and it imports one
lazily. Import from the submodules, e.g. `from unmask_core.faces.masks import apply_mask`; this
package file stays empty so that importing one submodule loads no other.
"""
