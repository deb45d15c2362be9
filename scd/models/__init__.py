"""The built-in model families: the shared DiT block (`blocks`), the baseline causal video diffuser (`baseline`)
and Separable Causal Diffusion (`scd_model`); each implements `scd.contract.VideoDiffuser`."""
