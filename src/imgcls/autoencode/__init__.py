"""Autoencoders: `imgcls autoencode` trains a convolutional autoencoder or VAE on any imgcls dataset (train.py), draws its
report (report.py); `imgcls embed` encodes image files with one (embed.py). The models live in models.py."""
