"""Studies of the shared parts: backbone and tile-stream benchmarks, the PEFT comparison, quickstarts."""
