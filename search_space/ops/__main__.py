"""`python -m search_space.ops`: build the fused CPU kernel now (the install step runs this)."""
from .acla_attend import load_extension

print("fast CPU attention kernel:", "built" if load_extension() is not None else "unavailable (reference path)")
