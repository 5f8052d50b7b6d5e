"""Generative adversarial networks: `imgcls gan` trains one on any dataset, `imgcls generate` draws from it.

models.py builds the networks for the data's shape, train.py holds the training loop and the run folder, sample.py
draws images from a saved generator, report.py makes the grids and plots and asks an imgcls classifier to judge them.
"""
