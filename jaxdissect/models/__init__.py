"""Generators: the Progressive GAN port and its discriminator for toy training."""
