"""Numbers, figures and the report from probe runs; reads run directories, never runs a model.

`similarity` (cross-step cosine), `pca` (PCA images), `sparsity` (cross-frame attention),
`claims` (the paper's claims with stated thresholds). Figures and `probe report` come next.
"""
