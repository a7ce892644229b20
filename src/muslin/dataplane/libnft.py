"""libnftables (Debian's libnftables1, which the nft binary itself links) through ctypes:
the same commands and scripts as `nft`, without starting a process (~1 ms instead of ~10).

`available()` says whether the library loads; callers fall back to the nft binary.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

NFT_CTX_DEFAULT = 0
NFT_CTX_OUTPUT_JSON = 1 << 4

_lib: ctypes.CDLL | None = None
_tried = False
_lock = threading.Lock()


def _load() -> ctypes.CDLL | None:
    global _lib, _tried
    with _lock:
        if not _tried:
            _tried = True
            for name in ("libnftables.so.1", ctypes.util.find_library("nftables")):
                if not name:
                    continue
                try:
                    lib = ctypes.CDLL(name)
                except OSError:
                    continue
                lib.nft_ctx_new.restype = ctypes.c_void_p
                lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
                lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
                lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
                lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
                lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
                lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
                lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
                lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
                lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
                lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
                lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
                _lib = lib
                break
    return _lib


def available() -> bool:
    return _load() is not None


def run(text: str, json_output: bool = False) -> tuple[int, str, str]:
    """Run nft commands (one command line, or a whole `-f` script) in this process's network
    namespace, as one transaction; returns (rc, stdout, stderr) as the nft binary would.
    A fresh context per call: no cache survives between calls."""
    lib = _load()
    if lib is None:
        raise OSError("libnftables is not available")
    ctx = lib.nft_ctx_new(NFT_CTX_DEFAULT)
    if not ctx:
        raise OSError("libnftables: nft_ctx_new failed")
    try:
        lib.nft_ctx_output_set_flags(ctx, NFT_CTX_OUTPUT_JSON if json_output else 0)
        lib.nft_ctx_buffer_output(ctx)
        lib.nft_ctx_buffer_error(ctx)
        rc = lib.nft_run_cmd_from_buffer(ctx, text.encode())
        out = (lib.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
        err = (lib.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        return (0 if rc == 0 else 1), out, err
    finally:
        lib.nft_ctx_free(ctx)
