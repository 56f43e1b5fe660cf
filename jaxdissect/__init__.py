"""jaxdissect: GAN Dissection in JAX."""
