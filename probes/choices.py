"""What a `Probe` accepts by name, importable without torch: the `probe` command lists them in its help."""

CAPTURES = ("features", "attention")  # what a Probe records per (layer, frame, step)
MODES = ("full", "stream")            # keep every token, or running reductions and a token subsample
BACKENDS = ("hookpoints", "nnsight")  # how a model is read: TransformerLens HookPoints, or nnsight by module path
GUIDANCE_PASSES = ("cond", "uncond")  # which pass of classifier-free guidance a Probe records
