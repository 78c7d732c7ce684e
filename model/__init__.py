"""Compile FLUX.1 per image shape into a versioned graph cache, and load it back."""
