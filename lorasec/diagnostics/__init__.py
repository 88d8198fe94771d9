"""Diagnostics, arrays in and arrays out: kernels, Fisher spectra, information measures, spectral and alignment
measures, the critical-scale threshold and the scale sweep. No files, no plots."""
