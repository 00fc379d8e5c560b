"""The PEFT comparison: phantom texture task, method x label-fraction grid, ``peft compare``, quickstart."""
