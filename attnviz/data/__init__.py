"""Data sets that training and reports share: the generated ``shapes`` set and the data specs."""
