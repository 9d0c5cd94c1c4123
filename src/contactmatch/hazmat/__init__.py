"""Hazardous materials: raw RFC 9497 / RFC 9380 building blocks. Use :mod:`contactmatch.oprf`.

Everything under ``contactmatch.hazmat`` is byte-oriented and does exactly what the RFCs say,
nothing more: the caller chooses the randomness hooks, keeps blinds secret, pins the server's
public key and tracks key ids. Getting any of that wrong silently loses the privacy the
protocol exists for. The safe layer (:class:`contactmatch.oprf.OprfClient`,
:class:`contactmatch.oprf.OprfServer`, :class:`contactmatch.keys.ServerKey`) does it for you.

Modules:

* :mod:`contactmatch.hazmat.xmd` -- ``expand_message_xmd`` (RFC 9380, SHA-512);
* :mod:`contactmatch.hazmat.ristretto` -- ristretto255 scalars and elements over libsodium
  (the copy bundled by ``rbcl``), with validation mapped to contactmatch errors;
* :mod:`contactmatch.hazmat.oprf` -- the ristretto255-SHA512 ciphersuite of RFC 9497 in modes
  OPRF, VOPRF and POPRF, including the batched DLEQ proofs;
* :mod:`contactmatch.hazmat.pir` -- SimplePIR (single-server LWE PIR, n=1024, q=2^32) in numpy:
  parameters, hint, batched answers, queries and recovery, hint deltas (``docs/pir.md``).
"""
