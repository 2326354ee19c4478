"""Records, plain data: traces (numpy with named dims, lengths, beams, grads) and their files, the emitted
hierarchy, and the stepper protocol the views read (``protocol``)."""
