"""On-disk model packages: manifest, signatures, hashing, atomic writes, pickle safety."""
