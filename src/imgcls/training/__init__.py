"""Training: the Trainer's loop and its task seam, setting runs up and resuming them, callbacks and live loggers, the
optimisers, weight averaging, fine-tuning's frozen stage, lr_find and cross-validation. imgcls.train is its face."""
