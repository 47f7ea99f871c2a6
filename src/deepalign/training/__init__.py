"""Training: pretraining the world base model, the DeRTa collator and loss, trainers, DPO."""
