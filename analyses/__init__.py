"""Numbers, figures, tables and the HTML report from recordings (`probes.Recording`, live or loaded).

`similarity` (cross-step cosine, centred cosine, CKA, controls), `redundancy` (the functional test), `pca`,
`sparsity` (cross-frame attention measures), `claims` (the paper's claims with thresholds and their
provenance), `emergence` and `emergence_figures` (the study), `figures` and `paper_figures`, `report`.
Two modules run a model to measure it: `interventions` (the causal effect of `probes.surgery`'s hooks
against the unmodified generation) and `bench` (speed and quality of generation, side by side); every
other module only reads recordings and tables.
"""
