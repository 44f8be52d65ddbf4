"""Cap'n Proto schemas used on the wire, loaded once with pycapnp.

Two schema files are needed:

- burrow's own ``schema/tunnelrpc.capnp`` (shipped as package data), wire-compatible with
  cloudflared's ``tunnelrpc/proto/tunnelrpc.capnp``;
- Cap'n Proto's own ``rpc.capnp``, which pycapnp ships inside its package directory. It imports
  ``/capnp/c++.capnp``, so the directory *containing* the ``capnp`` package is the import path.

pycapnp has no type stubs: everything it returns is ``Any``. Only ``burrow.wire.rpc`` and
``burrow.wire.registration`` touch these objects, each behind small typed helpers.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

import capnp

__all__ = ["rpc_schema", "schema_dir", "tunnelrpc_schema"]

_lock = threading.Lock()


def schema_dir() -> str:
    """Directory holding burrow's own ``.capnp`` files."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema")


def _capnp_package_dir() -> str:
    return os.path.dirname(os.path.abspath(str(capnp.__file__)))


@functools.cache
def rpc_schema() -> Any:
    """Cap'n Proto's ``rpc.capnp`` (the RPC protocol messages)."""
    pkg = _capnp_package_dir()
    path = os.path.join(pkg, "rpc.capnp")
    with _lock:
        return capnp.load(path, imports=[os.path.dirname(pkg)])


@functools.cache
def tunnelrpc_schema() -> Any:
    """burrow's ``tunnelrpc.capnp`` (RegistrationServer and its structs)."""
    path = os.path.join(schema_dir(), "tunnelrpc.capnp")
    with _lock:
        return capnp.load(path, imports=[os.path.dirname(_capnp_package_dir())])
