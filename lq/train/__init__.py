"""Training machinery shared by the pretrain, qat8 and lifelong stages."""
