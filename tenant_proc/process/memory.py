"""Give memory a tenant freed back to the kernel, so it stops counting as the tenant's own.

glibc keeps freed memory in its heap for reuse; a tenant that handled a burst of mail and then
idles for hours would hold those pages (its unique memory, USS) all that time. malloc_trim(0)
returns every whole free page. Called when a tenant goes back to waiting after work, not on a
timer: each call walks the whole heap.
"""
from __future__ import annotations

import ctypes

try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim  # the process's own symbols: libc's
    _malloc_trim.argtypes = [ctypes.c_size_t]
    _malloc_trim.restype = ctypes.c_int
except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
    _malloc_trim = None


def return_free_memory() -> bool:
    """True if memory was given back."""
    return bool(_malloc_trim(0)) if _malloc_trim is not None else False
