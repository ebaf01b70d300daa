"""nebula-xr's command line: ``onevm``, ``onehost`` and ``onevnet``.

Drop-in replacements for the OpenNebula 1.2 commands that speak only XML-RPC, so they
work from any machine that reaches oned (``$ONE_XMLRPC``, default
``http://localhost:2633/RPC2``). Changes go through the 1.2 methods, so scripts see
1.2's semantics and messages; listings and documents come from the 1.4 pool and info
methods. Output is 1.2's tables by default, ``-o json`` or ``-o xml`` for scripts.
"""
