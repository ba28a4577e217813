"""The training loop and the parts it is assembled from: trainer.py (the loop), engine.py (one optimizer step),
optim.py (LAMB, schedule), checkpoint.py, metrics.py, distributed.py, preemption.py (SIGTERM), backends.py
(ORTModule / eager / torch.compile) and deepspeed_support.py."""
