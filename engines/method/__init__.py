"""The paper's method: pose p and Net3D readers, the direction matrix A, the reenactment latent, face alignment and the zoos (which models make up a set, with their recipes)."""
