"""Causal Wan / SkyReels-V2 from a user's local diffusers directory: the chunk-causal model (`causal_wan`), loading a
pipeline (`pipeline`: transformer, VAE, umT5, scheduler), the causal VAE (`vae`), original-layout checkpoints
(`convert`) and the checks made before anything is loaded (`checks`)."""
