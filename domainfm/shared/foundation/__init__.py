"""Foundation models users already hold: a catalogue, layout converters and ``domainfm models``."""
