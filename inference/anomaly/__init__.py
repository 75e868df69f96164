"""The diffusion anomaly detector (Wolleb et al., MICCAI 2022): where a CT slice departs from
the healthy reconstruction a classifier-guided diffusion model makes of it."""
